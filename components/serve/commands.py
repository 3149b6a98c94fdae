"""`kubeclip client ...` as functions: options in, one JSON-ready record per input out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubeclip.components.options import option
from kubeclip.components.serve.client import EmbeddingClient
from kubeclip.components.serve.encoder import TritonEncoder, zero_shot


@dataclass(kw_only=True)
class ClientOptions:
    url: str = option(help="Triton's HOST:PORT (its gRPC port with --protocol grpc, its HTTP port with http)")
    protocol: str = option("grpc", "grpc or http")


@dataclass(kw_only=True)
class EmbedTextOptions(ClientOptions):
    texts: list[str] = option(help="texts to embed", positional=True)


@dataclass(kw_only=True)
class EmbedImageOptions(ClientOptions):
    images: list[str] = option(help="image files to embed", positional=True)


@dataclass(kw_only=True)
class ClassifyOptions(ClientOptions):
    images: list[str] = option(help="image files to classify", positional=True)
    labels: list[str] = option(help="class names")
    templates: list[str] = option(["a photo of a {c}."], "prompt templates with the placeholder {c}; each label's "
                                                         "prompts are averaged")


def embed_text(opts: EmbedTextOptions) -> list[dict]:
    with EmbeddingClient(opts.url, opts.protocol) as client:
        embeddings = client.embed_texts(opts.texts)
    return [{"text": text, "embedding": e.tolist()} for text, e in zip(opts.texts, embeddings)]


def embed_image(opts: EmbedImageOptions) -> list[dict]:
    with EmbeddingClient(opts.url, opts.protocol) as client:
        embeddings = client.embed_images([Path(p).read_bytes() for p in opts.images])
    return [{"image": path, "embedding": e.tolist()} for path, e in zip(opts.images, embeddings)]


def classify(opts: ClassifyOptions) -> list[dict]:
    encoder = TritonEncoder(opts.url, opts.protocol)
    try:
        probabilities = zero_shot(encoder, [Path(p).read_bytes() for p in opts.images], opts.labels, opts.templates)
    finally:
        encoder.close()
    records = []
    for path, row in zip(opts.images, probabilities.tolist()):
        scores = dict(sorted(zip(opts.labels, row), key=lambda kv: -kv[1]))
        records.append({"image": path, "label": next(iter(scores)), "scores": scores})
    return records
