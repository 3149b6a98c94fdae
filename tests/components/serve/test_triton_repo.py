"""The repository writer: every config.pbtxt parses as Triton's ModelConfig and names the right platform
or backend, tensors, batching, warm-up and model id, in both flavors; bad exports are refused clearly."""

import json
import shutil

import pytest

from kubeclip.components.export.triton_repo import MODELS, RepositoryError, TritonRepoOptions, triton_repo
from kubeclip.components.lineage import file_sha256

from .conftest import parse_configs

IMAGE_SIZE, CONTEXT, DIM = 64, 77, 128  # tiny-vit


def write(exported, out, **options) -> dict:
    summary = triton_repo(TritonRepoOptions(export=str(exported), out=str(out), **options))
    return parse_configs(out), summary


def tensors(config, key) -> list[tuple]:
    return [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config[key]]


def expected_model_id(checkpoint) -> str:
    return file_sha256(str(checkpoint / "model.safetensors"))[:12]


def check_common(configs, checkpoint, max_batch_size):
    assert set(configs) == set(MODELS)
    for name, config in configs.items():
        assert config["name"] == name and config["max_batch_size"] == max_batch_size
        assert config["parameters"]["kubeclip_model_id"]["string_value"] == expected_model_id(checkpoint)
    tokenizer, preprocess = configs["clip_tokenizer"], configs["clip_image_preprocess"]
    assert tokenizer["backend"] == preprocess["backend"] == "python"
    assert tensors(tokenizer, "input") == [("TEXT", "TYPE_STRING", [1])]
    assert tensors(tokenizer, "output") == [("input_ids", "TYPE_INT32", [CONTEXT])]
    assert tensors(preprocess, "input") == [("IMAGE", "TYPE_STRING", [1])]
    assert tensors(preprocess, "output") == [("pixel_values", "TYPE_FP32", [3, IMAGE_SIZE, IMAGE_SIZE])]
    assert preprocess["parameters"]["max_image_bytes"]["string_value"] == str(10 * 2**20)
    assert preprocess["parameters"]["max_image_pixels"]["string_value"] == "40000000"
    for python in (tokenizer, preprocess):
        assert python["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
        assert python["dynamic_batching"] == {}  # no waiting: a zero delay is protobuf's default, left out
        (warmup,) = python["model_warmup"]
        (source,) = warmup["inputs"].values()
        assert warmup["batch_size"] == 1 and source["input_data_file"]
    for name, kind, first, encoder, tensor in (("clip_embed_text", "TEXT", "clip_tokenizer", "clip_text_encoder",
                                                "input_ids"),
                                               ("clip_embed_image", "IMAGE", "clip_image_preprocess",
                                                "clip_image_encoder", "pixel_values")):
        ensemble = configs[name]
        assert ensemble["platform"] == "ensemble" and "instance_group" not in ensemble
        assert tensors(ensemble, "input") == [(kind, "TYPE_STRING", [1])]
        assert tensors(ensemble, "output") == [("EMBEDDING", "TYPE_FP32", [DIM])]
        steps = [(s["model_name"], s["input_map"], s["output_map"]) for s in ensemble["ensemble_scheduling"]["step"]]
        assert steps == [(first, {kind: kind}, {tensor: tensor}),
                         (encoder, {tensor: tensor}, {"embedding": "EMBEDDING"})]
    assert tensors(configs["clip_text_encoder"], "input") == [("input_ids", "TYPE_INT32", [CONTEXT])]
    assert tensors(configs["clip_image_encoder"], "input") == [("pixel_values", "TYPE_FP32", [3, IMAGE_SIZE,
                                                                                                 IMAGE_SIZE])]
    for encoder in ("clip_text_encoder", "clip_image_encoder"):
        assert tensors(configs[encoder], "output") == [("embedding", "TYPE_FP32", [DIM])]


def test_gpu_flavor_runs_onnx_runtime_with_tensorrt(exported, checkpoint, tmp_path):
    configs, summary = write(exported, tmp_path / "repo")
    check_common(configs, checkpoint, 64)
    assert summary["flavor"] == "gpu" and summary["model_id"] == expected_model_id(checkpoint)
    for name, batch_input in (("clip_image_encoder", f"pixel_values:{{}}x3x{IMAGE_SIZE}x{IMAGE_SIZE}"),
                              ("clip_text_encoder", f"input_ids:{{}}x{CONTEXT}")):
        config = configs[name]
        assert config["platform"] == "onnxruntime_onnx" and (tmp_path / "repo" / name / "1" / "model.onnx").is_file()
        assert config["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "1000"
        assert [w["batch_size"] for w in config["model_warmup"]] == [1, 64]
        (accelerator,) = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
        assert accelerator["name"] == "tensorrt"
        assert accelerator["parameters"] == {
            "precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30), "trt_layer_norm_fp32_fallback": "1",
            "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp/kubeclip-trt-cache",
            "trt_profile_min_shapes": batch_input.format(1), "trt_profile_opt_shapes": batch_input.format(16),
            "trt_profile_max_shapes": batch_input.format(64)}
    lineage = json.loads((tmp_path / "repo" / "lineage.json").read_text())
    assert lineage["step"] == "triton-repo" and lineage["inputs"]["export"]["model_id"] == summary["model_id"]
    assert lineage["inputs"]["image_encoder"]["sha256"] == file_sha256(str(exported / "image_encoder.onnx"))


def test_gpu_flavor_serves_tensorrt_plans_when_the_export_has_them(exported, checkpoint, tmp_path):
    export = shutil.copytree(exported, tmp_path / "export")
    (export / "trt").mkdir()
    for name in ("image_encoder", "text_encoder"):
        (export / "trt" / f"{name}.plan").write_bytes(b"engine bytes for " + name.encode())
    configs, _ = write(export, tmp_path / "repo")
    check_common(configs, checkpoint, 64)
    for name in ("clip_image_encoder", "clip_text_encoder"):
        assert configs[name]["platform"] == "tensorrt_plan" and "optimization" not in configs[name]
        assert (tmp_path / "repo" / name / "1" / "model.plan").read_bytes().startswith(b"engine bytes")
    with pytest.raises(RepositoryError, match="plans take batches up to 64"):
        triton_repo(TritonRepoOptions(export=str(export), out=str(tmp_path / "big"), max_batch_size=128))


def test_cpu_flavor_runs_the_encoders_as_python_models(exported, checkpoint, tmp_path):
    configs, summary = write(exported, tmp_path / "repo", flavor="cpu", max_batch_size=32, version=3)
    check_common(configs, checkpoint, 32)
    assert set(summary["models"].values()) == {"python", "ensemble"}
    for name in ("clip_image_encoder", "clip_text_encoder"):
        assert configs[name]["backend"] == "python"
        assert configs[name]["instance_group"] == [{"kind": "KIND_CPU", "count": 1}]
        assert sorted(p.name for p in (tmp_path / "repo" / name / "3").iterdir()) == ["model.onnx", "model.py",
                                                                                      "triton_io.py"]
    tokenizer_dir = tmp_path / "repo" / "clip_tokenizer" / "3"
    assert (tokenizer_dir / "tokenizer" / "tokenizer_config.json").is_file()
    assert (tokenizer_dir / "clip_bpe.py").is_file()


def test_cpu_flavor_serves_the_int8_variant_when_asked(exported, checkpoint, tmp_path):
    configs, summary = write(exported, tmp_path / "repo", flavor="cpu", precision="int8")
    check_common(configs, checkpoint, 64)
    assert summary["precision"] == "int8"
    lineage = json.loads((tmp_path / "repo" / "lineage.json").read_text())
    for tower, model_name in (("image_encoder", "clip_image_encoder"), ("text_encoder", "clip_text_encoder")):
        served = tmp_path / "repo" / model_name / "1" / "model.onnx"
        assert served.read_bytes() == (exported / f"{tower}.int8.onnx").read_bytes()
        assert lineage["inputs"][tower]["sha256"] == file_sha256(str(served))


def test_dynamic_batching_can_be_turned_off(exported, tmp_path):
    configs, _ = write(exported, tmp_path / "repo", flavor="cpu", dynamic_batching=False)
    assert not any("dynamic_batching" in config for config in configs.values())


def test_bad_exports_and_options_are_refused(exported, tmp_path):
    with pytest.raises(RepositoryError, match="--flavor 'tpu'"):
        triton_repo(TritonRepoOptions(export=str(exported), out=str(tmp_path / "a"), flavor="tpu"))
    with pytest.raises(RepositoryError, match="--precision int8 runs ONNX Runtime's int8 CPU kernels: use it with "
                                              "--flavor cpu"):
        triton_repo(TritonRepoOptions(export=str(exported), out=str(tmp_path / "a"), precision="int8"))
    with pytest.raises(RepositoryError, match="--precision 'int4': expected one of fp32, fp16, int8"):
        triton_repo(TritonRepoOptions(export=str(exported), out=str(tmp_path / "a"), precision="int4"))
    with pytest.raises(RepositoryError, match="no image_encoder.fp16.onnx or text_encoder.fp16.onnx; export with "
                                              "--fp16 to serve --precision fp16"):
        triton_repo(TritonRepoOptions(export=str(exported), out=str(tmp_path / "a"), precision="fp16"))
    with pytest.raises(RepositoryError, match="not an export folder, missing image_encoder.onnx"):
        triton_repo(TritonRepoOptions(export=str(tmp_path), out=str(tmp_path / "b")))
    export = shutil.copytree(exported, tmp_path / "export")
    (export / "lineage.json").unlink()
    with pytest.raises(RepositoryError, match="no checkpoint sha256"):
        triton_repo(TritonRepoOptions(export=str(export), out=str(tmp_path / "c")))
