"""A tiny CLIP exported once per session, its repositories, and one real Triton serving the cpu flavor.

gRPC clients run in child processes (`grpc_call`): tritonclient.grpc and kserve register the same
proto symbols, and a kserve test may share this pytest process.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from kubeclip import model
from kubeclip.components.export.step import ExportOptions, export
from kubeclip.components.export.triton_repo import TritonRepoOptions, triton_repo
from kubeclip.components.serve.encoder import TritonEncoder, zero_shot
from kubeclip.components.serve.transformer_process import TransformerProcess
from kubeclip.components.serve.triton_server import TritonServer

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint")
    model.save(model.build("tiny-vit"), path)
    return path


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export(ExportOptions(checkpoint=str(checkpoint), out=str(out), int8=True, parity_images=16))
    return out


@pytest.fixture(scope="session")
def cpu_repo(exported, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repo-cpu")
    triton_repo(TritonRepoOptions(export=str(exported), out=str(out), flavor="cpu", max_batch_size=16))
    return out


@pytest.fixture(scope="session")
def server(cpu_repo, tmp_path_factory):
    """Triton on the cpu repository; stopped with its stubs when the session ends, failed tests included."""
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    with TritonServer(cpu_repo, log_file=log, exit_timeout=2) as running:
        yield running


def grpc_call(url: str, method: str, items: list) -> np.ndarray:
    """EmbeddingClient(url, "grpc").<method>(items) in a child process (texts, or image bytes)."""
    code = textwrap.dedent("""
        import base64, json, sys
        from kubeclip.components.serve.client import EmbeddingClient
        url, method, kind = sys.argv[1:4]
        items = json.load(sys.stdin)
        if kind == "bytes":
            items = [base64.b64decode(i) for i in items]
        with EmbeddingClient(url, "grpc") as client:
            print(json.dumps(getattr(client, method)(items).tolist()))
    """)
    kind = "bytes" if items and isinstance(items[0], bytes) else "text"
    payload = [base64.b64encode(i).decode() for i in items] if kind == "bytes" else items
    done = subprocess.run([sys.executable, "-c", code, url, method, kind], input=json.dumps(payload), text=True,
                          capture_output=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return np.array(json.loads(done.stdout), dtype=np.float32)


def parse_configs(repo: Path) -> dict[str, dict]:
    """Every config.pbtxt of a repository parsed as Triton's ModelConfig protobuf (in a child process, see
    above), as dicts keyed by model name; a file that does not parse fails the call."""
    code = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
        out = {}
        for path in sorted(Path(sys.argv[1]).glob("*/config.pbtxt")):
            config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
            out[path.parent.name] = json_format.MessageToDict(config, preserving_proto_field_name=True)
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def transformer(server, tmp_path_factory):
    """`python -m kubeclip.components.serve.transformer` with the flags KServe injects, on the test Triton
    (whose repository takes batches of up to 16)."""
    log = tmp_path_factory.mktemp("transformer") / "transformer.log"
    with TransformerProcess(server.grpc_url, log, "--model_name", "clip", "--max-batch-size", "16",
                            "--max-image-pixels", "1000000", "--max-request-bytes", str(4 * 2**20)) as running:
        yield running.url


def triton_zero_shot(http_url: str, images: list[bytes], labels: list[str], templates: list[str]) -> torch.Tensor:
    """[N, C] zero-shot probabilities computed through Triton's ensembles over HTTP: the reference the
    transformer and the client are held to."""
    encoder = TritonEncoder(http_url, "http")
    try:
        return zero_shot(encoder, images, labels, templates)
    finally:
        encoder.close()
