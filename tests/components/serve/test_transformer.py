"""The KServe transformer on a real Triton: v1 and v2 answers equal what Triton's ensembles give, zero-shot
labels equal the reference computation, classifiers are cached, bad and oversized requests get clear 4xx
answers while the server keeps answering, and its /metrics counts what was sent."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from kubeclip.components.serve.load import closed_loop
from kubeclip.components.serve.triton_server import free_port

from .conftest import ROOT, grpc_call, triton_zero_shot

LABELS = ["red square", "green circle", "blue triangle"]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}."]


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = [png((200, 30, 30)), png((30, 200, 30), (64, 64)), png((30, 30, 200), (17, 50))]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predict(url: str, instances: list[dict], **parameters) -> httpx.Response:
    body = {"instances": instances, **({"parameters": parameters} if parameters else {})}
    return httpx.post(f"{url}/v1/models/clip:predict", json=body, timeout=120)


def embeddings(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([p["embedding"] for p in response.json()["predictions"]], dtype=np.float32)


def test_v1_embeddings_are_tritons_in_request_order(transformer, server):
    texts = ["a red square", "two green circles"]
    instances = [{"image_b64": b64(IMAGES[0])}, {"text": texts[0]}, {"image_b64": b64(IMAGES[1])},
                 {"text": texts[1]}]
    got = embeddings(predict(transformer, instances))
    images = grpc_call(server.grpc_url, "embed_images", IMAGES[:2])
    text = grpc_call(server.grpc_url, "embed_texts", texts)
    np.testing.assert_allclose(got, np.stack([images[0], text[0], images[1], text[1]]), atol=1e-6)


def test_more_instances_than_tritons_batch_are_sent_in_batches(transformer, server):
    texts = [f"a photo of {n} circles" for n in range(40)]  # the repository takes 16 per request
    got = embeddings(predict(transformer, [{"text": t} for t in texts]))
    np.testing.assert_allclose(got, grpc_call(server.grpc_url, "embed_texts", texts), atol=1e-6)


def test_v1_classify_equals_the_reference_zero_shot(transformer, server):
    response = predict(transformer, [{"image_b64": b64(i)} for i in IMAGES], task="classify", labels=LABELS,
                       templates=TEMPLATES)
    assert response.status_code == 200, response.text
    expected = triton_zero_shot(server.http_url, IMAGES, LABELS, TEMPLATES).numpy()
    for prediction, row in zip(response.json()["predictions"], expected):
        assert prediction["label"] == LABELS[int(row.argmax())]
        assert list(prediction["scores"]) == sorted(LABELS, key=lambda label: -row[LABELS.index(label)])
        np.testing.assert_allclose([prediction["scores"][label] for label in LABELS], row, atol=1e-5)


def v2_infer(url: str, name: str, data: list, **parameters) -> httpx.Response:
    body = {"inputs": [{"name": name, "shape": [len(data), 1], "datatype": "BYTES", "data": data}],
            **({"parameters": parameters} if parameters else {})}
    return httpx.post(f"{url}/v2/models/clip/infer", json=body, timeout=120)


def outputs(response: httpx.Response) -> dict[str, dict]:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def test_v2_embeds_text_and_images(transformer, server):
    text = outputs(v2_infer(transformer, "TEXT", ["a blue triangle", "a red square"]))["EMBEDDING"]
    assert text["datatype"] == "FP32" and text["shape"][0] == 2
    np.testing.assert_allclose(np.array(text["data"]).reshape(text["shape"]),
                               grpc_call(server.grpc_url, "embed_texts", ["a blue triangle", "a red square"]),
                               atol=1e-6)
    image = outputs(v2_infer(transformer, "IMAGE", [b64(IMAGES[2])]))["EMBEDDING"]
    np.testing.assert_allclose(np.array(image["data"]).reshape(image["shape"]),
                               grpc_call(server.grpc_url, "embed_images", IMAGES[2:]), atol=1e-6)


def test_v2_classify_answers_label_and_scores_like_v1(transformer):
    v1 = predict(transformer, [{"image_b64": b64(i)} for i in IMAGES], task="classify", labels=LABELS).json()
    answer = outputs(v2_infer(transformer, "IMAGE", [b64(i) for i in IMAGES], task="classify",
                              labels=json.dumps(LABELS)))  # a JSON string, as gRPC parameters must send it
    assert answer["LABEL"]["data"] == [p["label"] for p in v1["predictions"]]
    scores = np.array(answer["SCORES"]["data"]).reshape(answer["SCORES"]["shape"])
    np.testing.assert_allclose(scores, [[p["scores"][label] for label in LABELS] for p in v1["predictions"]],
                               atol=1e-6)


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}{{{selector}}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_classifiers_are_built_once_per_labels_and_templates(transformer):
    labels = ["dog", "cat", "horse", "zebra"]
    before = {r: metric(transformer, "kubeclip_transformer_classifier_cache_total", result=r) for r in ("hit", "miss")}
    for _ in range(3):
        assert predict(transformer, [{"image_b64": b64(IMAGES[0])}], task="classify", labels=labels).status_code == 200
    assert metric(transformer, "kubeclip_transformer_classifier_cache_total", result="miss") == before["miss"] + 1
    assert metric(transformer, "kubeclip_transformer_classifier_cache_total", result="hit") == before["hit"] + 2


def test_metrics_count_requests_in_kserves_histograms(transformer):
    before = metric(transformer, "request_predict_seconds_count", model_name="clip")
    for _ in range(3):
        assert predict(transformer, [{"text": "a cat"}]).status_code == 200
    assert metric(transformer, "request_predict_seconds_count", model_name="clip") == before + 3


BIG_PNG = png((0, 0, 0), (1200, 1000))  # 1.2 megapixels: over the fixture's --max-image-pixels 1000000


@pytest.mark.parametrize("instances,parameters,message", [
    ([], {}, "no instances"),
    ([{"txt": "a cat"}], {}, 'expected {"image_b64": BASE64} or {"text": STRING}'),
    ([{"text": "a cat", "image_b64": ""}], {}, "expected"),
    ([{"text": "   "}], {}, "must be a non-empty string"),
    ([{"text": "x" * 1001}], {}, "1001 characters: the limit is 1000"),
    ([{"text": 7}], {}, "must be a non-empty string"),
    ([{"image_b64": "not base64!"}], {}, "not valid base64"),
    ([{"image_b64": b64(b"GIF89a but not really")}], {}, "not an image in an accepted format"),
    ([{"image_b64": b64(BIG_PNG)}], {}, "megapixels is over the limit"),
    ([{"image_b64": "A" * (11 * 2**20 // 3 * 4)}], {}, None),  # over the body limit: 413 before parsing
    ([{"text": "a cat"}] * 257, {}, "257 instances: the limit is 256"),
    ([{"text": "a cat"}], {"task": "caption"}, "task 'caption'"),
    ([{"text": "a cat"}], {"task": "classify", "labels": ["a"]}, "classify takes images only"),
    ([{"image_b64": b64(IMAGES[0])}], {"task": "classify"}, "needs labels"),
    ([{"image_b64": b64(IMAGES[0])}], {"task": "classify", "labels": ["a", "a"]}, "labels must be distinct"),
    ([{"image_b64": b64(IMAGES[0])}], {"task": "classify", "labels": [f"c{i}" for i in range(1001)]},
     "1001 labels: the limit is 1000"),
    ([{"image_b64": b64(IMAGES[0])}], {"task": "classify", "labels": ["a"], "templates": ["a photo"]},
     "has no {c} placeholder"),
    ([{"image_b64": b64(IMAGES[0])}], {"task": "classify", "labels": ["a"], "templates": ["{d} {c}"]},
     "the field {d}: only a bare {c} is allowed"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_answering(transformer, instances, parameters, message):
    response = predict(transformer, instances, **parameters)
    if message is None:
        assert response.status_code == 413, response.text
    else:
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]
    assert predict(transformer, [{"text": "still here"}]).status_code == 200


def test_an_image_triton_cannot_decode_is_tritons_400(transformer):
    truncated = IMAGES[1][:60]  # the header is fine, the pixels are missing: only decoding finds out
    response = predict(transformer, [{"image_b64": b64(truncated)}])
    assert response.status_code == 400, response.text
    assert "clip_embed_image" in response.json()["error"]


def test_a_lying_content_length_is_refused_before_the_body_is_read(transformer):
    host, port = transformer.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"POST /v1/models/clip:predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                           f"application/json\r\nContent-Length: {10**9}\r\n\r\n{{}}".encode())
        assert connection.recv(4096).startswith(b"HTTP/1.1 413")


def test_v2_bad_inputs_get_400(transformer):
    assert v2_infer(transformer, "PIXELS", ["x"]).status_code == 400
    body = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "INT32", "data": [3]}]}
    response = httpx.post(f"{transformer}/v2/models/clip/infer", json=body, timeout=30)
    assert response.status_code == 400 and "must be BYTES" in response.text
    assert v2_infer(transformer, "IMAGE", [b64(IMAGES[0])], task="classify", labels="[oops").status_code == 400


def test_an_unknown_model_is_404(transformer):
    response = httpx.post(f"{transformer}/v1/models/siglip:predict", json={"instances": []}, timeout=30)
    assert response.status_code == 404


def test_kubeclip_serve_transformer_runs_it_against_a_local_triton(server, tmp_path):
    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "kubeclip.components.cli", "serve", "--transformer",
                                    "--predictor-url", server.grpc_url, "--max-batch-size", "16",
                                    "--http-port", str(port)],
                                   cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while not predict_ok(url) and time.time() < deadline:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        got = embeddings(predict(url, [{"text": "a green circle"}]))
        np.testing.assert_allclose(got, grpc_call(server.grpc_url, "embed_texts", ["a green circle"]), atol=1e-6)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def predict_ok(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v1/models/clip", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_load_through_the_transformer_with_bad_requests_mixed_in(transformer):
    """Concurrency 16 for a fixed time on loopback: no good request fails while malformed and oversized
    ones, sent during the load, get their 4xx."""
    def classify(client: httpx.Client, i: int) -> None:
        response = client.post(f"{transformer}/v1/models/clip:predict", timeout=60, json={
            "instances": [{"image_b64": b64(IMAGES[i % len(IMAGES)])}],
            "parameters": {"task": "classify", "labels": LABELS, "templates": TEMPLATES}})
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] in LABELS, response.text

    bad = [({"instances": "not a list"}, 400), ({"instances": [{"text": ""}]}, 400),
           ({"instances": [{"image_b64": "A" * (5 * 2**20)}]}, 413)]
    answers: list[tuple[int, int]] = []

    def meddle() -> None:
        with httpx.Client() as client:
            while len(answers) < 30:
                body, expected = bad[len(answers) % len(bad)]
                answers.append((client.post(f"{transformer}/v1/models/clip:predict", json=body, timeout=60)
                                .status_code, expected))
                time.sleep(0.1)

    meddler = threading.Thread(target=meddle)
    meddler.start()
    load = closed_loop(httpx.Client, classify, concurrency=16, duration=8, warmup=1)
    meddler.join()
    print(f"\ntransformer load, concurrency 16, classify 1 image into {len(LABELS)} labels: {load.summary()}")
    assert load.failures == []
    assert len(load.latencies) > 16
    assert [got for got, _ in answers] == [expected for _, expected in answers]
