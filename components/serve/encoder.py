"""The Encoder interface over Triton (the benchmark's `--backend triton`), and zero-shot classification
through it; embeddings come from the ensembles, so the served preprocessing and tokenizer are measured too."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kubeclip.components.benchmark.encoders import Encoder
from kubeclip.components.benchmark.templates import check_templates
from kubeclip.components.benchmark.zeroshot import classifier
from kubeclip.components.serve.client import EmbeddingClient


class TritonEncoder:
    def __init__(self, url: str, protocol: str = "grpc"):
        self.client = EmbeddingClient(url, protocol)

    def encode_images(self, images: list[bytes]) -> torch.Tensor:
        return F.normalize(torch.from_numpy(self.client.embed_images(images)), dim=-1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(torch.from_numpy(self.client.embed_texts(texts)), dim=-1)

    def close(self) -> None:
        self.client.close()


def zero_shot(encoder: Encoder, images: list[bytes], labels: list[str], templates: list[str],
             logit_scale: float = 100.0) -> torch.Tensor:
    """[N, C] probabilities: softmax over `logit_scale` x the cosine with each label's prompt ensemble
    (100: the scale CLIP's logit_scale is clamped to)."""
    if not labels:
        raise SystemExit("no labels to classify into")
    text = classifier(encoder, labels, check_templates(list(templates), "--templates"))
    return (logit_scale * encoder.encode_images(images) @ text.T).softmax(dim=-1)
