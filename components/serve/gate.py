"""What any one request may cost the transformer, enforced in front of kserve's app before the work starts.

An ASGI middleware for every POST: a path other than the prediction endpoints is 404 at once (kserve's
other verbs, such as :explain, would answer 501, a server error a client could run up); a cap on
requests in progress (503 with
Retry-After when full), body bytes counted as they arrive, chunked or not (413 past the limit, 408 when
the body is too slow), a budget of body bytes held by all requests together (503), a deadline for the
whole request (504) and cancellation of its work when the client disconnects. Errors leave as a JSON
`{"error": ...}` naming no internal detail; each answer is counted once, by status class and reason, in
`kubeclip_transformer_requests_total`, so alerts can tell client mistakes (4xx) from server faults (5xx).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

logger = logging.getLogger(__name__)

REQUESTS = Counter("kubeclip_transformer_requests", "Requests answered, by status class and reason",
                   ["code_class", "reason"])
IN_PROGRESS = Gauge("kubeclip_transformer_requests_in_progress", "Requests being worked on (bodies read)")
BODY_BYTES = Gauge("kubeclip_transformer_body_bytes_in_progress", "Request body bytes held by requests in progress")

REASONS = {200: "ok", 400: "invalid", 404: "not_found", 405: "invalid", 408: "slow_client", 413: "too_large",
           415: "unsupported_media", 422: "invalid", 500: "internal", 502: "predictor_error",
           503: "predictor_unavailable", 504: "deadline"}


class ServingError(Exception):
    """An answer other than 200, raised anywhere below the gate: its status, its reason (the metric label)
    and a message for the client."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.reason, self.retry_after = status, reason, retry_after


@dataclass(frozen=True)
class GateLimits:
    max_request_bytes: int = 16 * 2**20  # one body: an image at the 10 MiB limit, base64-encoded, and more
    max_concurrent_requests: int = 32  # per replica: the InferenceService's containerConcurrency
    max_body_bytes_in_progress: int = 64 * 2**20  # all bodies held at once: what bounds the memory
    body_timeout_seconds: float = 10.0  # to receive a whole body
    request_timeout_seconds: float = 30.0  # from the first byte to the answer


class Gate:
    def __init__(self, app, limits: GateLimits = GateLimits(), paths: frozenset[str] | None = None):
        """`paths`: the POST paths served (None: any)."""
        self.app, self.limits, self.paths = app, limits, paths
        self.in_progress = 0
        self.body_bytes = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        answer = _Answer(send)
        started = time.monotonic()
        try:
            if self.paths is not None and scope["path"] not in self.paths:
                raise ServingError(404, "not_found", f"no such endpoint: POST to {' or '.join(sorted(self.paths))}")
            self._check_room()  # before the body is read: a full replica refuses at once
            body, held = await self._read_body(scope, receive, started)
            try:
                self._check_room()  # slow bodies hold bytes of the budget, not work slots
                self.in_progress += 1
                IN_PROGRESS.inc()
                try:
                    await self._serve(scope, receive, body, answer, started)
                finally:
                    self.in_progress -= 1
                    IN_PROGRESS.dec()
            finally:
                self._release(held)
        except ServingError as e:
            await answer.error(e.status, e.reason, str(e), e.retry_after)
        except Exception:  # a bug: logged here with its request id, never shown to the client
            request_id = uuid.uuid4().hex[:12]
            logger.exception("request %s failed", request_id)
            await answer.error(500, "internal", f"internal error (request id {request_id})")
        finally:
            answer.count()

    def _check_room(self) -> None:
        if self.in_progress >= self.limits.max_concurrent_requests:
            raise ServingError(503, "busy", f"{self.in_progress} requests in progress, the most this replica "
                                            "takes; retry later", retry_after=1)

    async def _serve(self, scope, receive, body: bytes, answer: _Answer, started: float) -> None:
        """The app's answer, unless the client goes first or the deadline passes: then its work is cancelled."""
        disconnected = asyncio.Event()

        async def replay():
            """The body once, then (as uvicorn does) http.disconnect when the client goes."""
            nonlocal body
            if body is not None:
                message, body = {"type": "http.request", "body": body, "more_body": False}, None
                return message
            await disconnected.wait()
            return {"type": "http.disconnect"}

        work = asyncio.ensure_future(self.app(scope, replay, answer.send))
        watch = asyncio.ensure_future(_until_disconnect(receive, disconnected, answer))
        remaining = self.limits.request_timeout_seconds - (time.monotonic() - started)
        done, _ = await asyncio.wait({work, watch}, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        if work in done:
            return work.result()
        work.cancel()  # the client left or the deadline passed: its Triton calls are cancelled with it
        await asyncio.gather(work, return_exceptions=True)
        if watch in done:
            raise ServingError(499, "client_gone", "the client went away")
        raise ServingError(504, "deadline", f"no answer within {self.limits.request_timeout_seconds:g} s; "
                                            "send fewer instances or labels, or retry later")

    async def _read_body(self, scope, receive, started: float) -> tuple[bytes, int]:
        """The whole body and the bytes it holds of the budget, counted as it arrives; refused the moment it
        passes a limit."""
        limit = self.limits.max_request_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ServingError(413, "too_large", f"request body of {declared.decode(errors='replace')[:20]} bytes "
                                                 f"is over the limit of {limit} bytes; send fewer or smaller instances")
        chunks, held = [], 0
        deadline = started + self.limits.body_timeout_seconds
        try:
            while True:
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
                except TimeoutError:
                    raise ServingError(408, "slow_client", "the request body did not arrive within "
                                                           f"{self.limits.body_timeout_seconds:g} s") from None
                if message["type"] == "http.disconnect":
                    raise ServingError(499, "client_gone", "the client went away")
                chunk = message.get("body", b"")
                if held + len(chunk) > limit:
                    raise ServingError(413, "too_large", f"request body over the limit of {limit} bytes; send "
                                                         "fewer or smaller instances")
                self._hold(len(chunk))
                held += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks), held
        except BaseException:
            self._release(held)
            raise

    def _hold(self, size: int) -> None:
        if self.body_bytes + size > self.limits.max_body_bytes_in_progress:
            raise ServingError(503, "busy", "this replica holds as many request bytes as it takes; retry later",
                               retry_after=1)
        self.body_bytes += size
        BODY_BYTES.set(self.body_bytes)

    def _release(self, size: int) -> None:
        self.body_bytes -= size
        BODY_BYTES.set(self.body_bytes)


async def _until_disconnect(receive, disconnected: asyncio.Event, answer: _Answer) -> None:
    """Returns when the client disconnects before its answer has begun. (Once the body is read, uvicorn's
    receive waits for a disconnect, and also reports one when the response is complete: that one is no
    reason to cancel anything.)"""
    while True:
        message = await receive()
        if answer.status is not None:
            await asyncio.Future()  # answered: nothing left to watch; cancelled with the request
        if message["type"] == "http.disconnect":
            disconnected.set()
            return


class _Answer:
    """The response side: what status went out, so each request is counted once with its reason."""

    def __init__(self, send):
        self._send, self.status, self.reason = send, None, None

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.status == 503 and not any(k.lower() == b"retry-after" for k, _ in message.get("headers", [])):
                # kserve's "model not ready": Triton is away; tell clients when to come back
                message = {**message, "headers": [*message.get("headers", []), (b"retry-after", b"5")]}
        await self._send(message)

    async def error(self, status: int, reason: str, text: str, retry_after: int | None = None) -> None:
        self.reason = reason
        if self.status is not None or status == 499:
            return  # the answer had started, or there is nobody to answer
        headers = [(b"content-type", b"application/json")]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": json.dumps({"error": text}).encode()})

    def count(self) -> None:
        status = self.status or 499
        reason = self.reason or REASONS.get(status, "invalid" if 400 <= status < 500 else "internal")
        REQUESTS.labels(f"{status // 100}xx" if status != 499 else "4xx", reason).inc()
