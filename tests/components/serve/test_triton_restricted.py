"""Triton's non-inference APIs behind the admin header (triton_server.RESTRICTED_APIS), on the session's Triton,
which starts with the same restriction as the cluster's ServingRuntime: model control, shared memory, statistics,
trace and logging are refused without the header, over HTTP and gRPC, while health, metadata, model config and
inference answer anyone, and the transformer (which calls Triton without the header) is ready and answers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import httpx
import pytest

from kubeclip.components.serve.triton_server import RESTRICTED_APIS

from .conftest import ROOT

MODEL = "clip_embed_text"
# Requests to each restricted API. Refused, none changes anything; with the header only the reads are sent.
REFUSED = {
    "model-repository": [("POST", "/v2/repository/index"), ("POST", f"/v2/repository/models/{MODEL}/unload"),
                         ("POST", f"/v2/repository/models/{MODEL}/load")],
    "shared-memory": [("GET", "/v2/systemsharedmemory/status"), ("POST", "/v2/systemsharedmemory/region/x/unregister"),
                      ("GET", "/v2/cudasharedmemory/status")],
    "statistics": [("GET", "/v2/models/stats"), ("GET", f"/v2/models/{MODEL}/stats")],
    "trace": [("GET", "/v2/trace/setting")],
    "logging": [("GET", "/v2/logging"), ("POST", "/v2/logging")],
}
READS = [("POST", "/v2/repository/index"), ("GET", "/v2/systemsharedmemory/status"), ("GET", "/v2/models/stats"),
         ("GET", "/v2/trace/setting"), ("GET", "/v2/logging")]
OPEN = ["/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready", "/v2", f"/v2/models/{MODEL}",
        f"/v2/models/{MODEL}/config"]


def call(url: str, method: str, path: str, headers: dict | None = None, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body or {}).encode() if method == "POST" else None
    request = urllib.request.Request(f"http://{url}{path}", data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_every_restricted_api_is_exercised():
    assert REFUSED.keys() == set(RESTRICTED_APIS)


@pytest.mark.parametrize("method, path", [r for requests in REFUSED.values() for r in requests])
def test_restricted_http_apis_are_refused_without_the_header(server, method, path):
    status, body = call(server.http_url, method, path)
    assert status == 403 and "restricted" in body, (status, body)


@pytest.mark.parametrize("method, path", READS)
def test_the_header_unlocks_them(server, method, path):
    status, body = call(server.http_url, method, path, server.admin_headers())
    assert status == 200, (status, body)


def test_health_metadata_config_and_inference_stay_open(server):
    for path in OPEN:
        status, body = call(server.http_url, "GET", path)
        assert status == 200, (path, status, body)
    text = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["a photo of a cat"]}]}
    status, body = call(server.http_url, "POST", f"/v2/models/{MODEL}/infer", body=text)
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["name"] == "EMBEDDING"
    # and the models are all still loaded: the refused unload above changed nothing
    assert call(server.http_url, "GET", "/v2/health/ready")[0] == 200


def test_grpc_is_restricted_the_same_way(server):
    """In a child process: tritonclient.grpc and kserve cannot share one (conftest)."""
    code = textwrap.dedent("""
        import json, sys
        import grpc
        import numpy as np
        import tritonclient.grpc as tc
        from tritonclient.utils import InferenceServerException
        url, model, admin = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        client = tc.InferenceServerClient(url)
        refused = {}
        for name, call in {"repository_index": client.get_model_repository_index,
                           "unload": lambda **kw: client.unload_model(model, **kw),
                           "statistics": client.get_inference_statistics,
                           "shared_memory": client.get_system_shared_memory_status,
                           "trace": client.get_trace_settings, "logging": client.get_log_settings}.items():
            try:
                call()
                refused[name] = "answered"
            except InferenceServerException as e:
                refused[name] = e.message()
        client.get_model_repository_index(headers=admin)  # raises if the header does not unlock it
        # the transformer's calls, and the gRPC health check a probe would send
        health = grpc.insecure_channel(url).unary_unary("/grpc.health.v1.Health/Check")(b"")
        tensor = tc.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"a photo of a cat"]], dtype=object))
        shape = client.infer(model, [tensor]).as_numpy("EMBEDDING").shape
        print(json.dumps({"refused": refused, "ready": client.is_model_ready(model),
                          "metadata": client.get_model_metadata(model).name, "health": health.hex(),
                          "shape": list(shape)}))
    """)
    done = subprocess.run([sys.executable, "-c", code, server.grpc_url, MODEL,
                           json.dumps(server.admin_headers("grpc"))], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for name, message in result["refused"].items():
        assert "restricted" in message, (name, message)
    assert result["ready"] and result["metadata"] == MODEL and result["shape"][0] == 1
    assert result["health"] == "0801"  # grpc.health.v1 SERVING


def test_the_transformer_needs_none_of_them(transformer):
    """It calls Triton without the header: ready (its readiness probe's path) and answering."""
    assert httpx.get(f"{transformer}/v2/models/clip/ready", timeout=30).status_code == 200
    response = httpx.post(f"{transformer}/v1/models/clip:predict", json={"instances": [{"text": "a cat"}]},
                          timeout=120)
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"][0]["embedding"]) > 0
