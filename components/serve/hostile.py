"""Hostile requests for the transformer, each with the answers it may get: the corpus that
tests/components/serve/test_hostile.py and benchmarks/serve_under_attack.py send, and that an operator can
point at a test deployment (`for case in corpus(): case.send(url)`).

Every class of request that is tiny on the wire yet costly to serve: prompt templates that expand, prompt
products, each accepted image format at extreme aspect ratios and sizes (decompression bombs), unlisted
formats, chunked and lying bodies, deep JSON, instance floods, malformed v2 tensors, slow clients and
clients that leave. Requests go over raw sockets, so nothing in a client library smooths them.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import select
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

PREDICT, INFER = "/v1/models/clip:predict", "/v2/models/clip/infer"
TIMEOUT = 60.0


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # the class of attack
    send: Callable[[str], int | None]  # base URL -> the HTTP status, or None when no answer can come back
    expected: frozenset[int | None]  # when the replica has room; any request may get 503 ("busy") when it is full
    cheap: bool = True  # refused before any work reaches Triton


def outcome(case: Case, url: str) -> int | None | str:
    """What `case` got from the server at `url`: a status, None, or the client-side error (a timeout: hung)."""
    try:
        return case.send(url)
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def answered_as_expected(case: Case, status: int | None | str) -> bool:
    return status in case.expected or status == 503


def corpus() -> list[Case]:
    """Every case, its request built (the image bombs take a few seconds to encode: build before timing)."""
    image = encoded(Image.new("RGB", (32, 32), (200, 30, 30)), "PNG")
    return [
        *[Case(f"template {t}", "template", _classify([image], ["cat"], [t]), frozenset({400}))
          for t in ("a photo of a {c:>100000000}.", "{c!r}", "{c.__class__.__mro__}", "{c[0]}", "{0}", "{c")],
        Case("1000 labels x 100 templates", "prompt product",
             _classify([image], [f"label {i}" for i in range(1000)], [f"a photo of a {{c}} {i}" for i in range(100)]),
             frozenset({400})),
        Case("a 1000-character label in a 1000-character template", "prompt product",
             _classify([image], ["x" * 1000], ["{c}" + "y" * 997]), frozenset({400})),
        *[Case(f"{fmt} {w}x{h}", "image bomb", _embed_image(_bomb(fmt, w, h)), frozenset({400}))
          for fmt, w, h in (("PNG", 30000, 1), ("JPEG", 60000, 8), ("WEBP", 16000, 1), ("PNG", 7000, 7000),
                            ("JPEG", 8000, 6000), ("WEBP", 8000, 8000))],
        *[Case(f"{fmt} image", "unlisted format", _embed_image(encoded(Image.new("RGB", (8, 8)), fmt)),
               frozenset({400})) for fmt in ("GIF", "BMP", "TIFF", "ICO", "PPM")],
        Case("the largest legal image, 6000x6000", "legal but costly", _embed_image(_bomb("PNG", 6000, 6000)),
             frozenset({200, 503}), cheap=False),
        Case("5 of the largest legal bodies at once (2 images of 5.9 MB each)", "legal but costly",
             _burst(_post(json.dumps({"instances": [{"image_b64": base64.b64encode(_noise(1400)).decode()}] * 2})),
                    5), frozenset({200, 503}), cheap=False),
        Case("truncated PNG", "corrupt image", _embed_image(image[: len(image) // 2]), frozenset({400}), cheap=False),
        Case("chunked body past the limit", "body", _chunked(40 * 2**20), frozenset({413})),
        Case("Content-Length of 1 GB", "body", _post(b"{}", headers={"Content-Length": str(10**9)}),
             frozenset({413})),
        Case("Content-Length larger than the body, then silence", "body",
             _post(b'{"instances": [', headers={"Content-Length": "1000"}), frozenset({408})),
        Case("Content-Length smaller than the body", "body",
             _post(b'{"instances": [{"text": "a"}]}', headers={"Content-Length": "5"}), frozenset({400})),
        Case("JSON nested 100,000 deep", "json", _post(b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
             frozenset({400})),
        Case("not JSON", "json", _post(b"\xff\xfe{{{"), frozenset({400})),
        Case("100,000 instances", "instance flood", _post(json.dumps({"instances": [{"text": "a"}] * 100_000})),
             frozenset({400})),
        Case("unhashable labels", "parameters", _post(json.dumps({
            "instances": [{"image_b64": base64.b64encode(image).decode()}],
            "parameters": {"task": "classify", "labels": [["a"], {"b": 1}]}})), frozenset({400})),
        Case("v2 shape larger than its data", "v2", _post(json.dumps({"inputs": [
            {"name": "TEXT", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}), INFER), frozenset({400})),
        Case("v2 shape of strings", "v2", _post(json.dumps({"inputs": [
            {"name": "TEXT", "shape": ["x"], "datatype": "BYTES", "data": ["a"]}]}), INFER), frozenset({400, 422})),
        Case("v2 text that is not UTF-8", "v2", _v2_binary_text(b"\xff\xfe\xfa"), frozenset({400})),
        Case("slow client, 1 byte a second", "slow client", _slow(), frozenset({408})),
        Case("client leaves after a cold classify", "disconnect",
             _leave(_classify_body([image], [f"thing {time.time_ns()} {i}" for i in range(400)],
                                   [f"a photo of a {{c}}, take {i}" for i in range(10)])),
             frozenset({None}), cheap=False),
    ]


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@functools.cache
def _bomb(fmt: str, width: int, height: int) -> bytes:
    """A small file declaring a huge or extreme image: a one-colour image compresses to almost nothing."""
    return encoded(Image.new("L", (width, height)), fmt)


@functools.cache
def _noise(side: int) -> bytes:
    """A PNG that does not compress: side x side x 3 bytes of noise."""
    rng = np.random.default_rng(0)
    return encoded(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)), "PNG")


def _classify_body(images: list[bytes], labels: list[str], templates: list[str]) -> bytes:
    return json.dumps({"instances": [{"image_b64": base64.b64encode(i).decode()} for i in images],
                       "parameters": {"task": "classify", "labels": labels, "templates": templates}}).encode()


def _classify(images: list[bytes], labels: list[str], templates: list[str]):
    return _post(_classify_body(images, labels, templates))


def _embed_image(data: bytes):
    return _post(json.dumps({"instances": [{"image_b64": base64.b64encode(data).decode()}]}))


def _burst(send, copies: int):
    """`copies` of one request at once; the first answer outside {200, 503}, else 200 or 503."""
    def burst(url: str) -> int | None:
        with ThreadPoolExecutor(copies) as pool:
            statuses = list(pool.map(lambda _: send(url), range(copies)))
        return next((s for s in statuses if s not in (200, 503)), max(statuses))
    return burst


def _v2_binary_text(text: bytes):
    """A v2 request with the binary tensor extension, its one BYTES element holding `text`."""
    element = len(text).to_bytes(4, "little") + text
    header = json.dumps({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(element)}}]}).encode()
    return _post(header + element, INFER, {"Inference-Header-Content-Length": str(len(header))})


def _post(body: bytes | str, path: str = PREDICT, headers: dict[str, str] | None = None):
    """`body` with its Content-Length, unless `headers` gives another (a lying one)."""
    body = body.encode() if isinstance(body, str) else body

    def send(url: str) -> int | None:
        with _connect(url) as connection:
            return _exchange(connection, _head(url, path, {"Content-Length": str(len(body)), **(headers or {})}) + body)
    return send


def _chunked(total: int, chunk: int = 2**20):
    """A chunked body (no Content-Length) that goes on past any limit; stops sending once answered."""
    def send(url: str) -> int | None:
        with _connect(url) as connection:
            sent = 0
            try:
                connection.sendall(_head(url, PREDICT, {"Transfer-Encoding": "chunked"}))
                while sent < total and not select.select([connection], [], [], 0)[0]:
                    connection.sendall(f"{chunk:x}\r\n".encode() + b"a" * chunk + b"\r\n")
                    sent += chunk
                connection.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server answered and closed while we were still sending
            return _status(connection)
    return send


def _slow(interval: float = 1.0):
    """Headers at once, then the body a byte at a time, until the server gives up."""
    def send(url: str) -> int | None:
        body = json.dumps({"instances": [{"text": "a" * 100}]}).encode()
        with _connect(url) as connection:
            try:
                connection.sendall(_head(url, PREDICT, {"Content-Length": str(len(body))}))
            except OSError:
                return _status(connection)
            for byte in body:
                if select.select([connection], [], [], interval)[0]:
                    break  # answered
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    break
            return _status(connection)
    return send


def _leave(body: bytes):
    """The whole request, then the connection closed at once: nobody waits for the answer."""
    def send(url: str) -> None:
        with _connect(url) as connection:
            try:
                connection.sendall(_head(url, PREDICT, {"Content-Length": str(len(body))}) + body)
            except OSError:
                pass  # refused before it was all sent: gone all the same
        return None
    return send


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT)


def _head(url: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {urlsplit(url).netloc}", "Content-Type: application/json",
             "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _exchange(connection: socket.socket, request: bytes) -> int | None:
    """Send the request and read the status; a server may answer (413, 503) and close before it has all of it."""
    try:
        connection.sendall(request)
    except OSError:
        pass
    return _status(connection)


def _status(connection: socket.socket) -> int | None:
    """The status of the response, or None if the connection closed without one."""
    try:
        line = connection.makefile("rb").readline(1024)
    except OSError:
        return None
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else None
