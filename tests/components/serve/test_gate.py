"""The gate in front of the transformer, at the ASGI level: each limit refuses before the work, each answer is
counted once with its reason, work is cancelled when the client leaves or the deadline passes, and a bug
answers 500 with nothing of the bug in it."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import REGISTRY

from kubeclip.components.serve.gate import Gate, GateLimits, ServingError

LIMITS = GateLimits(max_request_bytes=100, max_concurrent_requests=1, max_body_bytes_in_progress=150,
                    body_timeout_seconds=0.2, request_timeout_seconds=0.5)


def counted(code_class: str, reason: str) -> float:
    return REGISTRY.get_sample_value("kubeclip_transformer_requests_total",
                                     {"code_class": code_class, "reason": reason}) or 0.0


class Client:
    """One request: its body in `chunks` (then, with `leave`, a disconnect), the messages sent back."""

    def __init__(self, chunks: list[bytes], headers: list[tuple[bytes, bytes]] = (), leave: bool = False,
                 pause: float = 0.0):
        self.incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                         for i, c in enumerate(chunks)]
        self.scope = {"type": "http", "method": "POST", "path": "/v1/models/clip:predict", "headers": list(headers)}
        self.leave, self.pause, self.sent, self.responded = leave, pause, [], asyncio.Event()

    async def receive(self):
        if self.incoming:
            await asyncio.sleep(self.pause)
            return self.incoming.pop(0)
        if not self.leave:
            await self.responded.wait()  # as uvicorn: a disconnect is reported once the response is complete
        return {"type": "http.disconnect"}

    async def send(self, message):
        self.sent.append(message)
        if message["type"] == "http.response.body":
            self.responded.set()

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def body(self) -> dict:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"))


async def echo(scope, receive, send):
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"echo": body.decode()}).encode()})


def run(app, client: Client, gate: Gate | None = None) -> Client:
    asyncio.run((gate or Gate(app, LIMITS))(client.scope, client.receive, client.send))
    return client


def test_an_answer_is_counted_once_as_what_it_was():
    before = counted("2xx", "ok")
    client = run(echo, Client([b'{"a":', b" 1}"]))
    assert client.status == 200 and client.body == {"echo": '{"a": 1}'}
    assert counted("2xx", "ok") == before + 1


@pytest.mark.parametrize("chunks, headers, status, reason", [
    ([b"x" * 60, b"x" * 60], [], 413, "too_large"),  # chunked: counted as it arrives
    ([b"{}"], [(b"content-length", b"1000")], 413, "too_large"),  # declared: refused before reading
    ([b"{}"], [(b"content-length", b"12abc")], 413, "too_large"),
])
def test_bodies_over_the_limit(chunks, headers, status, reason):
    before = counted("4xx", reason)
    client = run(echo, Client(chunks, headers))
    assert client.status == status and "over the limit of 100 bytes" in client.body["error"]
    assert counted("4xx", reason) == before + 1


def test_a_slow_body_is_408():
    client = run(echo, Client([b"{"] * 5, pause=0.1))
    assert client.status == 408 and "did not arrive within 0.2 s" in client.body["error"]


def test_a_full_replica_answers_503_with_retry_after_and_bodies_count_against_the_byte_budget():
    async def both():
        gate = Gate(echo, LIMITS)
        gate.in_progress = 1  # another request is being worked on
        full = Client([b"{}"])
        await gate(full.scope, full.receive, full.send)
        gate.in_progress, gate.body_bytes = 0, 100  # bodies being read hold 100 of the 150 bytes
        heavy = Client([b"x" * 60])
        await gate(heavy.scope, heavy.receive, heavy.send)
        return full, heavy, gate

    full, heavy, gate = asyncio.run(both())
    for client in (full, heavy):
        headers = dict(next(m for m in client.sent if m["type"] == "http.response.start")["headers"])
        assert client.status == 503 and headers[b"retry-after"] == b"1", client.body
    assert gate.body_bytes == 100  # what the refused request held was given back


def slow_app(cancelled: list):
    """An app that reads the body, then works for 10 s unless cancelled (noted in `cancelled`)."""
    async def slow(scope, receive, send):
        await receive()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
    return slow


def test_past_the_deadline_the_work_is_cancelled_and_504():
    cancelled = []
    client = run(slow_app(cancelled), Client([b"{}"]))
    assert client.status == 504 and "no answer within 0.5 s" in client.body["error"] and cancelled


def test_a_client_that_leaves_cancels_its_work():
    cancelled, before = [], counted("4xx", "client_gone")
    client = run(slow_app(cancelled), Client([b"{}"], leave=True))
    assert client.status is None and cancelled
    assert counted("4xx", "client_gone") == before + 1


def test_a_bug_is_a_500_that_names_no_internals():
    async def buggy(scope, receive, send):
        raise KeyError("/srv/secret/path 10.0.0.7:9000")

    client = run(buggy, Client([b"{}"]))
    assert client.status == 500 and client.body["error"].startswith("internal error (request id ")
    assert "secret" not in json.dumps(client.body) and "10.0.0.7" not in json.dumps(client.body)


def test_a_serving_error_is_answered_with_its_status():
    async def unavailable(scope, receive, send):
        raise ServingError(503, "predictor_unavailable", "the model server is not reachable", retry_after=5)

    before = counted("5xx", "predictor_unavailable")
    client = run(unavailable, Client([b"{}"]))
    assert client.status == 503 and client.body == {"error": "the model server is not reachable"}
    assert counted("5xx", "predictor_unavailable") == before + 1


def test_other_post_paths_are_404_before_the_body_is_read():
    client = Client([b"x" * 1000])
    client.scope["path"] = "/v1/models/clip:explain"
    gate = Gate(echo, LIMITS, paths=frozenset({"/v1/models/clip:predict"}))
    assert run(echo, client, gate).status == 404 and client.incoming  # nothing was read
