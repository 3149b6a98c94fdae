"""Zero-shot classification as in the paper: class names in prompt templates, embeddings averaged
over the templates and renormalised (ensembling), each image given the class of the nearest one."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from kubeclip.components.benchmark.cache import ClassifierCache
from kubeclip.components.benchmark.encoders import Encoder
from kubeclip.components.benchmark.features import embed_labelled
from kubeclip.components.datasets import class_names
from kubeclip.model.prompts import build_prompts

_CLASSES_PER_CALL = 64  # prompts go to the encoder a few classes at a time, for the progress bar


@dataclass(frozen=True)
class TextClassifier:
    ensemble: torch.Tensor  # [C, D]: per class, the renormalised mean of its prompts' embeddings
    single: torch.Tensor  # [C, D]: per class, its first prompt's embedding (the single-template baseline)


def text_classifier(encoder: Encoder, classnames: list[str], templates: list[str],
                    cache: ClassifierCache | None = None) -> TextClassifier:
    """The classifier, read from `cache` when it holds this (model, classes, templates), else built
    (and stored there)."""
    if cache is not None and (hit := cache.load(classnames, templates)) is not None:
        return TextClassifier(hit["ensemble"], hit["single"])
    per_class = []
    with tqdm(total=len(classnames), unit="class", desc="text classifier", mininterval=1, disable=None) as progress:
        for start in range(0, len(classnames), _CLASSES_PER_CALL):
            names = classnames[start:start + _CLASSES_PER_CALL]
            texts = build_prompts(names, templates)
            per_class.append(encoder.encode_texts(texts).view(len(names), len(templates), -1))
            progress.update(len(names))
    embeddings = torch.cat(per_class)  # [C, T, D]
    built = TextClassifier(F.normalize(embeddings.mean(dim=1), dim=-1), F.normalize(embeddings[:, 0], dim=-1))
    if cache is not None:
        cache.store(classnames, templates, {"ensemble": built.ensemble, "single": built.single})
    return built


def classifier(encoder: Encoder, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """[C, D]: the ensemble classifier alone."""
    return text_classifier(encoder, classnames, templates).ensemble


def scores(images: torch.Tensor, labels: torch.Tensor, text: TextClassifier) -> dict:
    """Top-1, top-5, mean per-class recall, per-class recall and the confusion matrix (rows: true
    class), with the single template's top-1 beside the ensemble's."""
    classes = text.ensemble.shape[0]
    logits = images @ text.ensemble.T
    predictions = logits.argmax(dim=1)
    top5 = logits.topk(min(5, classes), dim=1).indices
    confusion = confusion_matrix(labels, predictions, classes)
    recall, present = per_class_recall(confusion)
    return {"top1": accuracy(predictions, labels),
            "top5": (top5 == labels[:, None]).any(dim=1).float().mean().item(),
            "mean_per_class_recall": recall[present].mean().item(),
            "single_template_top1": accuracy((images @ text.single.T).argmax(dim=1), labels),
            "per_class_recall": recall.tolist(),
            "confusion_matrix": confusion.tolist()}


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).float().mean().item()


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, classes: int) -> torch.Tensor:
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    return confusion


def per_class_recall(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(recall of each class, whether the class has test images); absent classes count as 0 but are
    left out of the mean."""
    return confusion.diag().float() / confusion.sum(dim=1).clamp(min=1).float(), confusion.sum(dim=1) > 0


def evaluate(encoder: Encoder, root: str, templates: list[str], split: str = "test",
             max_images: int | None = None, classnames: list[str] | None = None,
             cache: ClassifierCache | None = None) -> dict:
    """Zero-shot scores on a classification set's split (class names from its classes.txt by default)."""
    classnames = classnames or class_names(root)
    images, labels = embed_labelled(encoder, root, split, max_images)
    text = text_classifier(encoder, classnames, templates, cache)
    return {**scores(images, labels, text), "images": len(labels), "classes": classnames}
