"""Parity of exported towers with PyTorch, on real images and texts: embedding cosine and max abs
difference, and whether zero-shot predictions stay the same. Gates turn the numbers into pass/fail."""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass

import torch

from kubeclip.components.benchmark.encoders import Encoder
from kubeclip.components.benchmark.zeroshot import classifier
from kubeclip.components.datasets import class_names, labelled_images
from kubeclip.components.prepare import synthetic
from kubeclip.model.prompts import build_prompts

EXTRA_TEXTS = ["", "a photo.", "A RED Circle On A Grey Background!", "two blue squares and " * 40]
# int8 moves embeddings measurably, so its gate also asks that zero-shot predictions stay put
GATES = {"fp32": {"cosine_min": 0.9999, "max_abs_diff": 1e-4}, "fp16": {"cosine_min": 0.999},
         "int8": {"cosine_min": 0.995, "zeroshot_agreement": 0.95}}


@dataclass
class ParitySet:
    images: list[bytes]
    labels: list[int]
    classnames: list[str]
    templates: list[str]

    @property
    def texts(self) -> list[str]:
        return build_prompts(self.classnames, self.templates) + EXTRA_TEXTS


def parity_set(root: str | None, image_size: int, max_images: int = 64) -> ParitySet:
    """A labelled classification set's test images, or, by default, the synthetic held-out compositions
    drawn on the fly."""
    if root:
        samples = list(itertools.islice(labelled_images(root, "test"), max_images))
        return ParitySet([d for _, d, _ in samples], [label for *_, label in samples], class_names(root),
                         ["a photo of a {c}.", "a picture of a {c}."])
    classes = [f"{colour} {shape}" for colour, shape in synthetic.heldout_compositions(0)]
    drawn = [synthetic.composition_sample(i, 0, image_size) for i in range(max_images)]
    return ParitySet([_png(d.image) for d in drawn], [d.label for d in drawn], classes,
                     list(synthetic.COMPOSITION_TEMPLATES))


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    cosine = torch.nn.functional.cosine_similarity(reference.double(), candidate.double(), dim=-1)
    return {"cosine_min": cosine.min().item(), "max_abs_diff": (reference - candidate).abs().max().item()}


def tower_parity(reference: Encoder, candidate: Encoder, data: ParitySet) -> dict[str, dict[str, float]]:
    """{"image": {...}, "text": {...}}: each tower of `candidate` against `reference`, the other tower fixed."""
    ref_images, cand_images = reference.encode_images(data.images), candidate.encode_images(data.images)
    ref_texts, cand_texts = reference.encode_texts(data.texts), candidate.encode_texts(data.texts)
    ref_classifier = classifier(reference, data.classnames, data.templates)
    cand_classifier = classifier(candidate, data.classnames, data.templates)
    expected = (ref_images @ ref_classifier.T).argmax(dim=1)
    return {
        "image": {**compare(ref_images, cand_images),
                  "zeroshot_agreement": _agreement(expected, cand_images @ ref_classifier.T)},
        "text": {**compare(ref_texts, cand_texts),
                 "zeroshot_agreement": _agreement(expected, ref_images @ cand_classifier.T)},
    }


def _agreement(expected: torch.Tensor, logits: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == expected).float().mean().item()


def gate(precision: str, figures: dict[str, float]) -> dict[str, dict]:
    """Each gated figure with its threshold and verdict."""
    out = {}
    for metric, threshold in GATES[precision].items():
        value = figures[metric]
        passed = value <= threshold if metric == "max_abs_diff" else value >= threshold
        out[metric] = {"value": value, "threshold": threshold, "passed": passed}
    return out
