"""End to end on a real Triton: export -> cpu-flavor repository -> tritonserver -> tritonclient.

The ensembles give PyTorch's embeddings within the fp32 gate at batch 1 and 16, over HTTP and gRPC;
PyTorch, ONNX Runtime and Triton agree on zero-shot predictions; bad requests get clear errors while
the server stays healthy; the Prometheus counters match what was sent; `serve` stops on SIGTERM. The
int8 variant, served the same way, stays within its gate and keeps PyTorch's zero-shot predictions.
"""

import io
import re
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import psutil
import pytest
import torch
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from kubeclip import model
from kubeclip.components.benchmark.encoders import TorchEncoder
from kubeclip.components.benchmark.onnx_encoder import OnnxEncoder
from kubeclip.components.benchmark.zeroshot import classifier
from kubeclip.components.export.parity import GATES, compare, parity_set
from kubeclip.components.export.triton_repo import TritonRepoOptions, triton_repo
from kubeclip.components.serve import commands
from kubeclip.components.serve.client import EmbeddingClient
from kubeclip.components.serve.encoder import TritonEncoder
from kubeclip.components.serve.triton_server import ServerError, TritonServer

from .conftest import ROOT, grpc_call


@pytest.fixture(scope="module")
def reference(checkpoint):
    return TorchEncoder(model.load(checkpoint))


@pytest.fixture(scope="module")
def data():
    return parity_set(None, 64, 32)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def assert_fp32_gate(expected, served):
    figures = compare(expected, torch.as_tensor(served))
    assert figures["cosine_min"] >= GATES["fp32"]["cosine_min"], figures
    assert figures["max_abs_diff"] <= GATES["fp32"]["max_abs_diff"], figures


@pytest.mark.parametrize("batch", [1, 16])
def test_ensembles_embed_like_pytorch_over_http_and_grpc(server, reference, data, batch):
    texts, images = data.texts[:batch], data.images[:batch]
    expected_texts, expected_images = reference.encode_texts(texts), reference.encode_images(images)
    with EmbeddingClient(server.http_url, "http") as client:
        served_texts, served_images = client.embed_texts(texts), client.embed_images(images)
    assert served_texts.shape == served_images.shape == (batch, 128)
    assert np.allclose(np.linalg.norm(served_images, axis=1), 1, atol=1e-5)
    for expected, served in ((expected_texts, served_texts), (expected_images, served_images),
                             (expected_texts, grpc_call(server.grpc_url, "embed_texts", texts)),
                             (expected_images, grpc_call(server.grpc_url, "embed_images", images))):
        assert_fp32_gate(expected, served)


def test_torch_onnx_and_triton_agree_on_zero_shot(server, reference, exported, data):
    triton = TritonEncoder(server.http_url, "http")
    predictions = []
    for encoder in (reference, OnnxEncoder(exported), triton):
        text = classifier(encoder, data.classnames, data.templates)
        predictions.append((encoder.encode_images(data.images) @ text.T).argmax(dim=1).tolist())
    triton.close()
    assert predictions[0] == predictions[1] == predictions[2]


def test_client_commands_embed_and_classify(server, reference, data, tmp_path):
    paths = []
    for i, image in enumerate(data.images[:3]):
        paths.append(str(tmp_path / f"{i}.png"))
        (tmp_path / f"{i}.png").write_bytes(image)
    records = commands.embed_image(commands.EmbedImageOptions(url=server.http_url, protocol="http", images=paths))
    assert [r["image"] for r in records] == paths
    assert_fp32_gate(reference.encode_images(data.images[:3]), np.array([r["embedding"] for r in records],
                                                                        dtype=np.float32))
    labels = data.classnames[:4]
    results = commands.classify(commands.ClassifyOptions(url=server.http_url, protocol="http", images=paths,
                                                         labels=labels, templates=["a photo of a {c}."]))
    text = classifier(reference, labels, ["a photo of a {c}."])
    expected = (reference.encode_images(data.images[:3]) @ text.T).argmax(dim=1).tolist()
    assert [labels.index(r["label"]) for r in results] == expected
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-4 for r in results)


def bad_requests() -> dict[str, tuple[str, str, np.ndarray, str, str]]:
    """name: (model, input, data, datatype, what the error must say)."""
    png = encoded(Image.new("RGB", (40, 30), (200, 30, 30)))
    noise = np.random.default_rng(0).integers(0, 256, (1900, 1900, 3), dtype=np.uint8)
    over_bytes = encoded(Image.fromarray(noise))  # ~10.3 MiB of incompressible PNG
    over_pixels = encoded(Image.new("L", (8000, 6000)))  # 48 megapixels in a few kB
    one = lambda item: np.array([[item]], dtype=object)  # noqa: E731
    return {
        "wrong dtype": ("clip_embed_text", "TEXT", np.zeros((1, 1), np.float32), "FP32", "expects 'BYTES'"),
        "wrong shape": ("clip_embed_image", "IMAGE", np.array([[png, png]], dtype=object), "BYTES",
                        "unexpected shape for input 'IMAGE'"),
        "batch over the limit": ("clip_embed_text", "TEXT", np.array([[b"a"]] * 17, dtype=object), "BYTES",
                                 "batch-size must be <= 16"),
        "corrupt image": ("clip_embed_image", "IMAGE", one(b"\xff\xd8\xff\xe0 not really a jpeg"), "BYTES",
                          "IMAGE[0]: not a decodable image"),
        "truncated image": ("clip_embed_image", "IMAGE", one(png[: len(png) // 2]), "BYTES",
                            "IMAGE[0]: corrupt or truncated PNG image"),
        "image over the byte limit": ("clip_embed_image", "IMAGE", one(over_bytes), "BYTES",
                                      "IMAGE[0]: 10.3 MiB is over the limit of 10.0 MiB"),
        "image over the pixel limit": ("clip_embed_image", "IMAGE", one(over_pixels), "BYTES",
                                       "IMAGE[0]: 8000x6000 = 48.0 megapixels is over the limit of 40.0"),
        "empty string": ("clip_embed_text", "TEXT", one(b""), "BYTES", "TEXT[0]: empty text"),
        "blank string in a batch": ("clip_embed_text", "TEXT", np.array([[b"a cat"], [b"  \n"]], dtype=object),
                                    "BYTES", "TEXT[1]: empty text"),
        "invalid UTF-8": ("clip_embed_text", "TEXT", one(b"\xff\xfe"), "BYTES", "TEXT[0]: not valid UTF-8"),
        "unknown model": ("clip_embed_audio", "AUDIO", one(b"x"), "BYTES", "unknown model: 'clip_embed_audio'"),
    }


def http_infer(client, model_name: str, input_name: str, data: np.ndarray, datatype: str):
    tensor = httpclient.InferInput(input_name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return client.infer(model_name, [tensor])


def test_bad_requests_get_clear_errors_and_the_server_stays_healthy(server, data):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for name, (model_name, input_name, array, datatype, message) in bad_requests().items():
            with pytest.raises(InferenceServerException) as raised:
                http_infer(client, model_name, input_name, array, datatype)
            assert message in raised.value.message(), (name, raised.value.message())
            assert raised.value.status() in ("400", "404"), (name, raised.value.status())
        assert client.is_server_live() and client.is_server_ready()
        assert all(client.is_model_ready(m) for m in ("clip_embed_text", "clip_embed_image", "clip_tokenizer",
                                                      "clip_image_preprocess", "clip_text_encoder",
                                                      "clip_image_encoder"))
        good = http_infer(client, "clip_embed_image", "IMAGE", np.array([[data.images[0]]], dtype=object), "BYTES")
        assert good.as_numpy("EMBEDDING").shape == (1, 128)
    finally:
        client.close()


def counters(url: str) -> dict[tuple[str, str], float]:
    """{(metric, model): value} of Triton's per-model inference counters, failure reasons summed."""
    values: dict[tuple[str, str], float] = {}
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if match := re.match(r'(nv_inference_\w+)\{.*model="(\w+)".*\} (\S+)$', line):
            key = (match.group(1), match.group(2))
            values[key] = values.get(key, 0) + float(match.group(3))
    return values


def test_prometheus_counts_what_was_sent(server, data):
    before = counters(server.metrics_url)
    with EmbeddingClient(server.http_url, "http") as client:
        for size in (1, 3, 5):
            client.embed_texts(data.texts[:size])
        for size in (2, 4):
            client.embed_images(data.images[:size])
        for _ in range(2):
            with pytest.raises(InferenceServerException):
                client.embed_texts([""])
    after = counters(server.metrics_url)
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert delta[("nv_inference_request_success", "clip_embed_text")] == 3
    assert delta[("nv_inference_count", "clip_embed_text")] == 1 + 3 + 5
    assert delta[("nv_inference_request_success", "clip_embed_image")] == 2
    assert delta[("nv_inference_count", "clip_embed_image")] == 2 + 4
    assert delta[("nv_inference_request_success", "clip_image_encoder")] == 2
    assert delta[("nv_inference_request_success", "clip_text_encoder")] == 3  # the failed two never got there
    # Triton 2.51 counts an ensemble's failed request once per failing level (the step, then the ensemble)
    assert delta[("nv_inference_request_failure", "clip_embed_text")] >= 2
    assert delta[("nv_inference_request_failure", "clip_embed_image")] == 0


def test_serve_runs_until_sigterm_and_leaves_no_process(cpu_repo):
    code = ("import sys; from kubeclip.components.serve.triton_server import ServeOptions, serve; "
            f"sys.exit(serve(ServeOptions(repo={str(cpu_repo)!r}, http_port=0, grpc_port=0, metrics_port=0, "
            "exit_timeout=2)))")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("Triton ready: HTTP "), line
        http_url = line.split("HTTP ")[1].split(",")[0]
        with EmbeddingClient(http_url, "http") as client:
            assert client.embed_texts(["a red circle"]).shape == (1, 128)
        tree = psutil.Process(process.pid).children(recursive=True)
        assert any("tritonserver" in p.name() for p in tree)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert time.monotonic() - started < 30
        assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if process.poll() is None:
            process.kill()


def test_the_int8_repository_serves_within_its_gate(exported, reference, data, tmp_path):
    repo = tmp_path / "repo-int8"
    triton_repo(TritonRepoOptions(export=str(exported), out=str(repo), flavor="cpu", precision="int8",
                                  max_batch_size=16))
    with TritonServer(repo, log_file=tmp_path / "triton.log", exit_timeout=2) as server:
        int8 = TritonEncoder(server.http_url, "http")
        served = {"image": int8.encode_images(data.images[:16]), "text": int8.encode_texts(data.texts[:16])}
        predicted = (int8.encode_images(data.images) @ classifier(int8, data.classnames, data.templates).T).argmax(1)
        int8.close()
    expected = {"image": reference.encode_images(data.images[:16]), "text": reference.encode_texts(data.texts[:16])}
    for tower in ("image", "text"):
        assert compare(expected[tower], served[tower])["cosine_min"] >= GATES["int8"]["cosine_min"]
    reference_predicted = (reference.encode_images(data.images) @
                           classifier(reference, data.classnames, data.templates).T).argmax(1)
    agreement = (predicted == reference_predicted).float().mean().item()
    assert agreement >= GATES["int8"]["zeroshot_agreement"]


def test_the_gpu_flavor_is_refused_before_starting(exported, tmp_path):
    triton_repo(TritonRepoOptions(export=str(exported), out=str(tmp_path / "repo"), flavor="gpu"))
    with pytest.raises(ServerError, match="clip_image_encoder, clip_text_encoder need a backend .* --flavor cpu"):
        TritonServer(tmp_path / "repo")


def test_a_server_that_cannot_start_reports_why_and_leaves_nothing(tmp_path):
    broken = tmp_path / "repo" / "clip_broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 4\ninput [{ name: "X" }]\n')
    server = TritonServer(tmp_path / "repo", log_file=tmp_path / "triton.log", startup_timeout=60)
    with pytest.raises(ServerError, match="tritonserver exited with code 1 while starting") as raised:
        server.start()
    assert "clip_broken" in str(raised.value)
    assert server.process.poll() is not None
    assert not server._workdir.exists()
