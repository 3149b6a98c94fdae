"""The KServe transformer in front of Triton: a friendly JSON API for embeddings and zero-shot labels.

Application teams send images (base64) and texts; the transformer checks them (components/serve/queries.py),
calls the Triton predictor's ensembles `clip_embed_image` and `clip_embed_text` over gRPC v2 (kserve's own
client: tritonclient.grpc cannot share a process with kserve) in batches of up to `--max-batch-size`, and
answers embeddings, or each image's label and per-label probabilities (softmax of 100 x cosine with the
label's prompt ensemble). Zero-shot classifiers are built once per (labels, templates) and cached; requests
that need the same classifier while it is being built wait for that one build.

    python -m components.serve.transformer --predictor_host HOST:PORT [--model_name clip] [--http_port 8080]

KServe starts it with `--model_name`, `--predictor_host` and `--http_port`; `kubeclip serve --transformer`
starts it against a local Triton. Metrics on the HTTP port's /metrics: kserve's request_*_seconds
histograms and the kubeclip_transformer_* counters below.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import functools
import uuid

import grpc
import kserve
import numpy as np
from kserve import model_server
from kserve.errors import InferenceError, InvalidInput
from kserve.predictor_config import PredictorConfig
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse
from prometheus_client import Counter
from starlette.responses import PlainTextResponse

from components.serve.client import EMBED_IMAGE, EMBED_TEXT
from components.serve.queries import Limits, Query, parse_v1, parse_v2

LOGIT_SCALE = 100.0  # the value CLIP's learned temperature is clamped to, as in components/serve/encoder.py

INSTANCES = Counter("kubeclip_transformer_instances", "Images and texts received in valid requests", ["kind"])
INVALID = Counter("kubeclip_transformer_invalid_requests", "Requests refused before reaching Triton (HTTP 4xx)")
CLASSIFIER_CACHE = Counter("kubeclip_transformer_classifier_cache", "Zero-shot classifier lookups", ["result"])


@dataclasses.dataclass(frozen=True)
class Call:
    query: Query
    v2: InferRequest | None  # the v2 request, answered in kind; None for v1


@dataclasses.dataclass(frozen=True)
class Answer:
    call: Call
    values: np.ndarray  # [N, D] embeddings, or [N, C] probabilities over the labels


class ClipTransformer(kserve.Model):
    def __init__(self, name: str, limits: Limits = Limits(), max_batch_size: int = 64, cache_size: int = 32):
        super().__init__(name)
        self.limits, self.max_batch_size, self.cache_size = limits, max_batch_size, cache_size
        self._classifiers: collections.OrderedDict[tuple, asyncio.Task] = collections.OrderedDict()
        self.ready = True

    def validate(self, payload):
        return payload  # preprocess has checked everything

    async def preprocess(self, payload, headers=None) -> Call:
        try:
            call = Call(parse_v2(payload, self.limits), payload) if isinstance(payload, InferRequest) \
                else Call(parse_v1(payload, self.limits), None)
        except InvalidInput:
            INVALID.inc()
            raise
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
        """[N, D] L2-normalised embeddings of images and texts, in the order given."""
        images = [i for i, item in enumerate(items) if isinstance(item, bytes)]
        texts = [i for i, item in enumerate(items) if isinstance(item, str)]
        parts = await asyncio.gather(
            *(self._infer(EMBED_IMAGE, "IMAGE", [items[i] for i in chunk]) for chunk in self._chunks(images)),
            *(self._infer(EMBED_TEXT, "TEXT", [items[i].encode() for i in chunk]) for chunk in self._chunks(texts)))
        order = [i for chunk in [*self._chunks(images), *self._chunks(texts)] for i in chunk]
        embeddings = np.concatenate(parts)
        return embeddings[np.argsort(order)]

    async def classifier(self, labels: tuple[str, ...], templates: tuple[str, ...]) -> np.ndarray:
        """[C, D]: each label's prompts embedded, averaged and renormalised; built once per (labels, templates)."""
        key = (labels, templates)
        build = self._classifiers.get(key)
        CLASSIFIER_CACHE.labels("miss" if build is None else "hit").inc()
        if build is None:
            build = self._classifiers[key] = asyncio.ensure_future(self._build_classifier(labels, templates))
            build.add_done_callback(functools.partial(self._forget_failed, key))
            while len(self._classifiers) > self.cache_size:
                self._classifiers.popitem(last=False)
        self._classifiers.move_to_end(key)
        return await asyncio.shield(build)

    def _forget_failed(self, key: tuple, build: asyncio.Task) -> None:
        """A build that failed is not kept: the next request for these labels tries again."""
        if (build.cancelled() or build.exception()) and self._classifiers.get(key) is build:
            del self._classifiers[key]

    async def _build_classifier(self, labels: tuple[str, ...], templates: tuple[str, ...]) -> np.ndarray:
        prompts = [template.format(c=label) for label in labels for template in templates]
        per_prompt = (await self.embed(prompts)).reshape(len(labels), len(templates), -1)
        mean = per_prompt.mean(axis=1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    def _chunks(self, indices: list[int]) -> list[list[int]]:
        return [indices[start:start + self.max_batch_size] for start in range(0, len(indices), self.max_batch_size)]

    async def _infer(self, model: str, input_name: str, items: list[bytes]) -> np.ndarray:
        tensor = InferInput(input_name, [len(items), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(items, dtype=object).reshape(-1, 1))
        try:
            response = await self._grpc_client.infer(InferRequest(model, [tensor], request_id=str(uuid.uuid4())))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                INVALID.inc()
                raise InvalidInput(f"{model}: {e.details()}") from None
            raise InferenceError(f"the predictor failed ({model}: {e.code().name}: {e.details()})") from None
        return response.outputs[0].as_numpy()

    def _v2_response(self, request: InferRequest, outputs: list[InferOutput]) -> InferResponse:
        return InferResponse(request.id or str(uuid.uuid4()), self.name, outputs)


def _output(name: str, values: np.ndarray) -> InferOutput:
    output = InferOutput(name, list(values.shape), "BYTES" if values.dtype == object else "FP32")
    output.set_data_from_numpy(values if values.dtype == object else values.astype(np.float32), binary_data=False)
    return output


class BodyLimit:
    """ASGI middleware: a request whose Content-Length is over the limit gets 413 before it is read."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > self.max_bytes:
                INVALID.inc()
                response = PlainTextResponse(f"request body over the limit of {self.max_bytes} bytes (or a bad "
                                             "Content-Length); send fewer or smaller instances", status_code=413)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def parser() -> argparse.ArgumentParser:
    """kserve's model-server flags (the ones KServe injects, underscored) plus the transformer's own."""
    p = argparse.ArgumentParser(prog="python -m components.serve.transformer", description=__doc__,
                                parents=[model_server.parser], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(model_name="clip", predictor_protocol="grpc-v2", http_port=8080)
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="largest batch sent to Triton: the repository's max_batch_size (default: %(default)s)")
    p.add_argument("--classifier-cache-size", type=int, default=32,
                   help="zero-shot classifiers kept, least recently used dropped first (default: %(default)s)")
    p.add_argument("--max-request-bytes", type=int, default=64 * 2**20,
                   help="largest request body; larger ones get 413 (default: %(default)s)")
    for limit in dataclasses.fields(Limits):
        p.add_argument(f"--{limit.name.replace('_', '-')}", type=int, default=limit.default,
                       help=f"request limit (default: {limit.default})")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.predictor_protocol != "grpc-v2":
        p.error(f"--predictor_protocol {args.predictor_protocol}: the transformer calls Triton over grpc-v2; "
                "point --predictor_host at Triton's gRPC port")
    if not args.predictor_host:
        p.error("--predictor_host HOST:PORT (Triton's gRPC endpoint) is required")
    limits = Limits(**{limit.name: getattr(args, limit.name) for limit in dataclasses.fields(Limits)})
    transformer = ClipTransformer(args.model_name, limits, args.max_batch_size, args.classifier_cache_size)
    model_server.app.add_middleware(BodyLimit, max_bytes=args.max_request_bytes)
    config = PredictorConfig(predictor_host=args.predictor_host, predictor_protocol=args.predictor_protocol,
                             predictor_use_ssl=args.predictor_use_ssl,
                             predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
                             predictor_request_retries=args.predictor_request_retries,
                             predictor_health_check=args.enable_predictor_health_check)
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
                       workers=args.workers, predictor_config=config).start([transformer])


if __name__ == "__main__":
    main()
