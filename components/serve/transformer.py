"""The KServe transformer in front of Triton: a friendly JSON API for embeddings and zero-shot labels.

Application teams send images (base64) and texts; the transformer checks them (components/serve/queries.py),
calls the Triton predictor's ensembles `clip_embed_image` and `clip_embed_text` over gRPC v2 (kserve's own
client: tritonclient.grpc cannot share a process with kserve) in batches of up to `--max-batch-size`, and
answers embeddings, or each image's label and per-label probabilities (softmax of 100 x cosine with the
label's prompt ensemble). Zero-shot classifiers are built once per (labels, templates) and cached; requests
that need the same classifier while it is being built wait for that one build, and a build nobody waits for
any more is cancelled.

What a request may cost is bounded before the work (components/serve/gate.py: body bytes, requests in
progress, deadline, disconnects; queries.py: what the instances expand into), and Triton calls are bounded
per request and per replica, so a cold classifier build cannot starve other requests. Readiness follows
Triton's: the model is ready while both ensembles are (checked at most every `READY_TTL` seconds), and a
prediction while Triton is unreachable is a 503, never a 500.

    python -m kubeclip.components.serve.transformer --predictor_host HOST:PORT [--model_name clip] [--http_port 8080]

KServe starts it with `--model_name`, `--predictor_host` and `--http_port`; `kubeclip serve --transformer`
starts it against a local Triton. Metrics on the HTTP port's /metrics: kserve's request_*_seconds
histograms, gate.py's kubeclip_transformer_requests_total and the counters below.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import time
import uuid

import grpc
import kserve
import numpy as np
import orjson
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.predictor_config import PredictorConfig
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer
from prometheus_client import Counter

from kubeclip.components.serve.client import EMBED_IMAGE, EMBED_TEXT
from kubeclip.components.serve.gate import Gate, GateLimits, ServingError
from kubeclip.components.serve.queries import Limits, Query, parse_v1, parse_v2
from kubeclip.model.prompts import build_prompts

LOGIT_SCALE = 100.0  # the value CLIP's learned temperature is clamped to, as in components/serve/encoder.py
READY_TTL = 1.0  # seconds a readiness answer of Triton's is reused
READY_TIMEOUT = 2.0  # seconds a readiness check may take
# Triton away, stopping or without the model loaded (NOT_FOUND while it unloads on shutdown): not ready, so 503
UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
               grpc.StatusCode.NOT_FOUND)

INSTANCES = Counter("kubeclip_transformer_instances", "Images and texts received in valid requests", ["kind"])
CLASSIFIER_CACHE = Counter("kubeclip_transformer_classifier_cache", "Zero-shot classifier lookups", ["result"])


@dataclasses.dataclass(frozen=True)
class Call:
    query: Query
    v2: InferRequest | None  # the v2 request, answered in kind; None for v1


@dataclasses.dataclass(frozen=True)
class Answer:
    call: Call
    values: np.ndarray  # [N, D] embeddings, or [N, C] probabilities over the labels


@dataclasses.dataclass(frozen=True)
class Capacity:
    """How much of Triton one replica, and one request, may use at once."""
    max_batch_size: int = 64  # items per Triton call: the repository's max_batch_size
    triton_calls: int = 8  # Triton calls in flight per replica
    triton_calls_per_request: int = 2  # so a large request (a cold classifier) leaves room for others
    classifier_builds: int = 1  # cold classifier builds at once
    classifier_cache_size: int = 32  # zero-shot classifiers kept, least recently used dropped first


class ClipTransformer(kserve.Model):
    def __init__(self, name: str, limits: Limits = Limits(), capacity: Capacity = Capacity()):
        super().__init__(name)
        self.limits, self.capacity = limits, capacity
        self._classifiers: collections.OrderedDict[tuple, asyncio.Task] = collections.OrderedDict()
        self._waiting: collections.Counter[tuple] = collections.Counter()
        self._triton_calls = asyncio.Semaphore(capacity.triton_calls)
        self._builds = asyncio.Semaphore(capacity.classifier_builds)
        self._readiness: asyncio.Task | None = None
        self._ready_until = 0.0
        self.ready = True  # kserve's start-up check; healthy() answers for Triton

    async def healthy(self) -> bool:
        """Ready while both ensembles are ready in Triton; one check at a time, reused for READY_TTL."""
        if time.monotonic() >= self._ready_until and (self._readiness is None or self._readiness.done()):
            self._readiness = asyncio.ensure_future(self._check_predictor())
        return await asyncio.shield(self._readiness)

    async def _check_predictor(self) -> bool:
        try:
            answers = await asyncio.wait_for(asyncio.gather(
                *(self._grpc_client.is_model_ready(name, timeout=READY_TIMEOUT) for name in (EMBED_TEXT, EMBED_IMAGE))),
                READY_TIMEOUT)
            ready = all(answers)
        except (grpc.RpcError, TimeoutError):
            ready = False
        self._ready_until = time.monotonic() + READY_TTL
        return ready

    def validate(self, payload):
        return payload  # preprocess has checked everything

    async def preprocess(self, payload, headers=None) -> Call:
        call = Call(parse_v2(payload, self.limits), payload) if isinstance(payload, InferRequest) \
            else Call(parse_v1(payload, self.limits), None)
        for item in call.query.items:
            INSTANCES.labels("text" if isinstance(item, str) else "image").inc()
        return call

    async def predict(self, call: Call, headers=None) -> Answer:
        query = call.query
        if query.task == "embed":
            return Answer(call, await self.embed(query.items))
        images, classes = await asyncio.gather(self.embed(query.items), self.classifier(query.labels, query.templates))
        logits = LOGIT_SCALE * images @ classes.T
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        return Answer(call, probabilities / probabilities.sum(axis=1, keepdims=True))

    def postprocess(self, answer: Answer, headers=None) -> dict | InferResponse:
        query, v2 = answer.call.query, answer.call.v2
        if query.task == "embed":
            if v2 is None:
                return {"predictions": [{"embedding": row} for row in answer.values.tolist()]}
            return self._v2_response(v2, [_output("EMBEDDING", answer.values)])
        best = [query.labels[i] for i in answer.values.argmax(axis=1)]
        if v2 is None:
            return {"predictions": [
                {"label": label, "scores": dict(sorted(zip(query.labels, row), key=lambda kv: -kv[1]))}
                for label, row in zip(best, answer.values.tolist())]}
        return self._v2_response(v2, [_output("LABEL", np.array(best, dtype=object)),
                                      _output("SCORES", answer.values)])

    async def embed(self, items: list[bytes | str]) -> np.ndarray:
        """[N, D] L2-normalised embeddings of images and texts, in the order given, with at most
        `triton_calls_per_request` of this request's Triton calls in flight."""
        images = [i for i, item in enumerate(items) if isinstance(item, bytes)]
        texts = [i for i, item in enumerate(items) if isinstance(item, str)]
        calls = [(EMBED_IMAGE, "IMAGE", chunk, [items[i] for i in chunk]) for chunk in self._chunks(images)]
        calls += [(EMBED_TEXT, "TEXT", chunk, [items[i].encode() for i in chunk]) for chunk in self._chunks(texts)]
        parts: list[np.ndarray | None] = [None] * len(calls)

        async def worker(queue: collections.deque) -> None:
            while queue:
                n, (model, input_name, _, data) = queue.popleft()
                parts[n] = await self._infer(model, input_name, data)

        queue = collections.deque(enumerate(calls))
        workers = [asyncio.ensure_future(worker(queue))
                   for _ in range(min(self.capacity.triton_calls_per_request, len(calls)))]
        try:
            await asyncio.gather(*workers)
        finally:  # one call failed: the others stop too
            for task in workers:
                task.cancel()
        order = [i for _, _, chunk, _ in calls for i in chunk]
        return np.concatenate(parts)[np.argsort(order)]

    async def classifier(self, labels: tuple[str, ...], templates: tuple[str, ...]) -> np.ndarray:
        """[C, D]: each label's prompts embedded, averaged and renormalised; built once per (labels, templates)
        and cancelled when every request waiting for it has gone."""
        key = (labels, templates)
        build = self._classifiers.get(key)
        CLASSIFIER_CACHE.labels("miss" if build is None else "hit").inc()
        if build is None:
            build = self._classifiers[key] = asyncio.ensure_future(self._build_classifier(labels, templates))
            build.add_done_callback(lambda done: self._forget_failed(key, done))
            while len(self._classifiers) > self.capacity.classifier_cache_size:
                self._classifiers.popitem(last=False)
        self._classifiers.move_to_end(key)
        self._waiting[key] += 1
        try:
            return await asyncio.shield(build)
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
                if not build.done():
                    build.cancel()

    def _forget_failed(self, key: tuple, build: asyncio.Task) -> None:
        """A build that failed or was cancelled is not kept: the next request for these labels tries again."""
        if (build.cancelled() or build.exception()) and self._classifiers.get(key) is build:
            del self._classifiers[key]

    async def _build_classifier(self, labels: tuple[str, ...], templates: tuple[str, ...]) -> np.ndarray:
        async with self._builds:
            prompts = build_prompts(list(labels), templates)
            per_prompt = (await self.embed(prompts)).reshape(len(labels), len(templates), -1)
        mean = per_prompt.mean(axis=1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    def _chunks(self, indices: list[int]) -> list[list[int]]:
        size = self.capacity.max_batch_size
        return [indices[start:start + size] for start in range(0, len(indices), size)]

    async def _infer(self, model: str, input_name: str, items: list[bytes]) -> np.ndarray:
        tensor = InferInput(input_name, [len(items), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(items, dtype=object).reshape(-1, 1))
        try:
            async with self._triton_calls:
                response = await self._grpc_client.infer(InferRequest(model, [tensor], request_id=str(uuid.uuid4())))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:  # the client's input, found by Triton (a truncated image)
                raise InvalidInput(f"{model}: {e.details()}") from None
            if e.code() in UNAVAILABLE:
                self._ready_until = 0.0  # ask Triton again on the next readiness check
                raise ServingError(503, "predictor_unavailable", "the model server is not reachable; retry later",
                                   retry_after=5) from None
            raise ServingError(502, "predictor_error", f"the model server failed ({e.code().name})") from None
        return response.outputs[0].as_numpy()

    def _v2_response(self, request: InferRequest, outputs: list[InferOutput]) -> InferResponse:
        return InferResponse(request.id or str(uuid.uuid4()), self.name, outputs)


def _output(name: str, values: np.ndarray) -> InferOutput:
    output = InferOutput(name, list(values.shape), "BYTES" if values.dtype == object else "FP32")
    output.set_data_from_numpy(values if values.dtype == object else values.astype(np.float32), binary_data=False)
    return output


class DirectPredict:
    """ASGI: `POST /v1/models/{name}:predict` of this model, straight to the model's preprocess, predict and
    postprocess (kserve's Model.__call__, its latency histograms included). kserve's own v1 route adds FastAPI
    routing, a per-request readiness lookup and the dataplane's decoding, about half of what the transformer
    costs over calling Triton directly (benchmarks/transformer_throughput.py). Other routes go to kserve."""

    def __init__(self, app, model: ClipTransformer):
        self.app, self.model, self.path = app, model, f"/v1/models/{model.name}:predict"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        chunks = []
        while (message := await receive())["type"] == "http.request":  # the gate has read it: one message
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if not await self.model.healthy():
            raise ServingError(503, "predictor_unavailable", f"model {self.model.name} is not ready; retry later",
                               retry_after=5)
        try:
            payload = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as e:
            raise ServingError(400, "invalid", f"the body is not JSON ({e})") from None
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        try:
            result, _ = await self.model(payload, headers)
            answer = orjson.dumps(result)
        except InvalidInput as e:
            raise ServingError(400, "invalid", str(e)) from None
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


def _rest_server(host: str, max_connections: int) -> type[RESTServer]:
    """kserve's REST server bound to `host` (kserve binds 0.0.0.0 whatever it is asked), answering 503 to
    connections past `max_connections` (uvicorn's limit_concurrency: a backstop for connection floods), and
    without kserve's per-request timing middleware (a getrusage call and a log line per request; the
    request_*_seconds histograms measure the same)."""
    class Server(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host, self.config.limit_concurrency = host, max_connections

        def _add_middlewares(self, app) -> None:
            if self.access_log_format:  # asked for access logs: kserve's middlewares, timing included
                super()._add_middlewares(app)

    return Server


def parser() -> argparse.ArgumentParser:
    """kserve's model-server flags (the ones KServe injects, underscored) plus the transformer's own."""
    p = argparse.ArgumentParser(prog="python -m kubeclip.components.serve.transformer", description=__doc__,
                                parents=[model_server.parser], formatter_class=argparse.RawDescriptionHelpFormatter)
    # kserve's per-request latency log line is off: the request_*_seconds histograms measure the same
    p.set_defaults(model_name="clip", predictor_protocol="grpc-v2", http_port=8080, enable_grpc=False,
                   enable_latency_logging=False)
    p.add_argument("--host", default="0.0.0.0", help="address the HTTP server listens on (default: %(default)s)")
    for group, options in (("request limits", Limits), ("replica limits", GateLimits), ("Triton use", Capacity)):
        arguments = p.add_argument_group(group)
        for field in dataclasses.fields(options):
            arguments.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default,
                                   help="(default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.predictor_protocol != "grpc-v2":
        p.error(f"--predictor_protocol {args.predictor_protocol}: the transformer calls Triton over grpc-v2; "
                "point --predictor_host at Triton's gRPC port")
    if not args.predictor_host:
        p.error("--predictor_host HOST:PORT (Triton's gRPC endpoint) is required")
    limits, gate, capacity = (options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options)})
                              for options in (Limits, GateLimits, Capacity))
    transformer = ClipTransformer(args.model_name, limits, capacity)
    model_server.app.add_middleware(DirectPredict, model=transformer)
    paths = frozenset({f"/v1/models/{args.model_name}:predict", f"/v2/models/{args.model_name}/infer"})
    model_server.app.add_middleware(Gate, limits=gate, paths=paths)  # added last: outermost
    model_server.RESTServer = _rest_server(args.host, 4 * gate.max_concurrent_requests)
    # kserve's gRPC server (off unless --enable_grpc true) reads its options from kserve's own parse of argv;
    # it gets the request limits (preprocess) and the body limit, but not the REST gate's cap and deadline
    model_server.args.grpc_max_receive_message_length = gate.max_request_bytes
    config = PredictorConfig(predictor_host=args.predictor_host, predictor_protocol=args.predictor_protocol,
                             predictor_use_ssl=args.predictor_use_ssl,
                             predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
                             predictor_request_retries=args.predictor_request_retries,
                             predictor_health_check=False)  # healthy() checks Triton's ensembles itself
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                       workers=args.workers, enable_latency_logging=args.enable_latency_logging,
                       predictor_config=config).start([transformer])


if __name__ == "__main__":
    main()
