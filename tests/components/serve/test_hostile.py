"""The transformer under hostile traffic, on a real Triton: every hostile request (components/serve/hostile.py)
gets its 4xx, 413, 503 or 504, and the cheap refusals cost Triton nothing; valid traffic beside it never gets
a 500 or a hung connection, at least 95% of it succeeds, and the memory of the transformer and of every
Triton process stays under the manifests' limits. Then Triton goes away and comes back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from kubeclip.components.serve import hostile
from kubeclip.components.serve.load import PeakMemory, closed_loop, memory_limit, process_tree
from kubeclip.components.serve.transformer_process import TransformerProcess
from kubeclip.components.serve.triton_server import TritonServer, free_port

from .conftest import ROOT
from .test_transformer import IMAGES, LABELS, TEMPLATES, b64

DURATION = 30.0  # seconds of valid traffic with the corpus sent beside it
VALID = [{"instances": [{"text": "a red square"}]},
         {"instances": [{"image_b64": b64(IMAGES[1])}]},
         {"instances": [{"image_b64": b64(IMAGES[0])}], "parameters": {"task": "classify", "labels": LABELS,
                                                                       "templates": TEMPLATES}}]


@pytest.fixture(scope="module")
def guarded(server, tmp_path_factory):
    """The transformer with the limits it ships with (only the batch size follows the test repository's)."""
    log = tmp_path_factory.mktemp("guarded") / "transformer.log"
    with TransformerProcess(server.grpc_url, log, "--max-batch-size", "16") as running:
        yield running


def triton_inferences(server) -> float:
    """Requests Triton has taken, all models, successful or not."""
    text = httpx.get(f"{server.metrics_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("nv_inference_request_success{", "nv_inference_request_failure{")))


def test_cheap_refusals_never_reach_triton(guarded, server):
    before = triton_inferences(server)
    with ThreadPoolExecutor(4) as pool:
        cases = [c for c in hostile.corpus() if c.cheap]
        answers = dict(zip((c.name for c in cases), pool.map(lambda c: hostile.outcome(c, guarded.url), cases)))
    wrong = {c.name: answers[c.name] for c in cases if answers[c.name] not in c.expected}
    assert not wrong, wrong
    assert triton_inferences(server) == before


def test_hostile_traffic_beside_valid_traffic(guarded, server):
    memory = PeakMemory({"transformer": [guarded.process.pid], "triton": process_tree(server.process.pid)})
    memory.start()
    statuses: list[tuple[str, int, str]] = []  # valid answers that were not 200
    answered: list[tuple[str, int | None]] = []

    def valid(client: httpx.Client, i: int) -> None:
        response = client.post(f"{guarded.url}{hostile.PREDICT}", json=VALID[i % len(VALID)], timeout=60)
        if response.status_code != 200:
            statuses.append((str(i), response.status_code, response.headers.get("retry-after", "")))
            raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

    cases = hostile.corpus()

    def attack(stop: threading.Event) -> None:
        with ThreadPoolExecutor(4) as pool:
            while not stop.is_set():
                for case, status in zip(cases, pool.map(lambda c: hostile.outcome(c, guarded.url), cases)):
                    answered.append((case.name, status))

    stop = threading.Event()
    attacker = threading.Thread(target=attack, args=(stop,))
    attacker.start()
    try:
        load = closed_loop(httpx.Client, valid, concurrency=16, duration=DURATION, warmup=1)
    finally:
        stop.set()
        attacker.join()
        peaks = memory.stop()
    print(f"\nvalid traffic beside the hostile corpus: {load.summary()}; hostile answers: {len(answered)}; "
          f"peak RSS MiB: { {k: round(v / 2**20) for k, v in peaks.items()} }")

    by_name = {case.name: case for case in cases}
    wrong = [(name, status) for name, status in answered if not hostile.answered_as_expected(by_name[name], status)]
    assert not wrong, wrong
    assert {name for name, _ in answered} == set(by_name)  # every case was sent at least once
    assert all(status == 503 and retry for _, status, retry in statuses), statuses  # only "busy", with Retry-After
    succeeded = len(load.latencies)
    assert succeeded >= 0.95 * (succeeded + len(statuses)), (succeeded, statuses)
    serving = ROOT / "manifests" / "base" / "serving"
    assert peaks["transformer"] < memory_limit(serving / "clip.yaml", "kserve-container")
    assert peaks["triton"] < memory_limit(serving / "kubeclip-triton.yaml", "kserve-container")


def test_triton_gone_and_back(cpu_repo, tmp_path):
    """Triton stopped under load: within 5 s the transformer's model readiness (what its readiness probe asks)
    turns not-ready and predictions get 503 naming no internal address; once Triton is back on the same
    address, the same transformer process serves again."""
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    triton = TritonServer(cpu_repo, log_file=tmp_path / "triton-1.log", exit_timeout=2, **ports).__enter__()
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                response = client.post(f"{url}{hostile.PREDICT}", json=VALID[0], timeout=30)
                statuses.append((response.status_code, response.text))
                time.sleep(0.02)

    try:
        with TransformerProcess(triton.grpc_url, tmp_path / "transformer.log", "--max-batch-size", "16") as guarded:
            pid = guarded.process.pid
            loader = threading.Thread(target=load, args=(guarded.url,))
            loader.start()
            try:
                time.sleep(1)
                triton.__exit__(None, None, None)
                stopped = time.monotonic()
                while ready(guarded.url):
                    assert time.monotonic() - stopped < 5, "still ready 5 s after Triton stopped"
                    time.sleep(0.1)
                assert not ready(guarded.url, "/v1/models/clip")
                response = httpx.post(f"{guarded.url}{hostile.PREDICT}", json=VALID[0], timeout=30)
                assert response.status_code == 503 and response.headers.get("retry-after"), response.text
                triton = TritonServer(cpu_repo, log_file=tmp_path / "triton-2.log", exit_timeout=2, **ports).__enter__()
                back = time.monotonic()
                while not ready(guarded.url):
                    assert time.monotonic() - back < 10, "not ready 10 s after Triton came back"
                    time.sleep(0.1)
                assert ready(guarded.url, "/v1/models/clip")
                assert httpx.post(f"{guarded.url}{hostile.PREDICT}", json=VALID[0], timeout=30).status_code == 200
                assert guarded.process.pid == pid and guarded.process.poll() is None
            finally:
                stop.set()
                loader.join()
    finally:
        triton.__exit__(None, None, None)
    assert {status for status, _ in statuses} <= {200, 503}, statuses
    assert 503 in {status for status, _ in statuses}
    leaked = [text for _, text in statuses if "127.0.0.1" in text or str(ports["grpc_port"]) in text]
    assert not leaked, leaked[:3]


def ready(url: str, path: str = "/v2/models/clip/ready") -> bool:
    """The transformer's model readiness as its readiness probe reads it (or the v1 endpoint, `path`)."""
    return httpx.get(f"{url}{path}", timeout=10).status_code == 200


def test_a_client_that_leaves_takes_its_work_with_it(guarded, server):
    """A cold classifier of 4,000 prompts, and the client gone as soon as it has asked: the transformer stops
    sending its prompts to Triton instead of finishing the build for nobody."""
    def text_inferences() -> float:
        text = httpx.get(f"{server.metrics_url}/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("nv_inference_request_success{") and 'model="clip_embed_text"' in line)

    (leave,) = [case for case in hostile.corpus() if case.kind == "disconnect"]
    before = text_inferences()
    leave.send(guarded.url)
    time.sleep(2)
    stopped = text_inferences()
    time.sleep(2)
    assert text_inferences() == stopped  # nothing more was sent
    assert stopped - before < 4000 / 16 / 2  # and far less than the whole build (250 calls of 16 prompts)


def test_the_transformer_listens_only_where_it_is_told(guarded):
    """`--host 127.0.0.1` (as TransformerProcess passes it): no socket of its is open to the network."""
    listening = [c.laddr for c in psutil.Process(guarded.process.pid).connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening
