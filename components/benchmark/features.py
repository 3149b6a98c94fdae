"""Splits streamed through an encoder in chunks, so no split is ever held in memory as images:
only its embeddings (a few hundred floats per image) are kept."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import fsspec
import torch
from tqdm import tqdm

from kubeclip.components.benchmark.encoders import Encoder
from kubeclip.components.datasets import captions, image_bytes, labelled_images, split_samples

CHUNK = 1024  # images per encoder call: big enough for any batch size, small enough to stream
_T = TypeVar("_T")


def split_size(root: str, split: str, max_images: int | None = None) -> int:
    """Samples in a split, from the manifest (for progress bars and early errors)."""
    with fsspec.open(f"{root.rstrip('/')}/manifest.json", "r") as f:
        samples = json.load(f).get("splits", {}).get(split, {}).get("samples", 0)
    return samples if max_images is None else min(samples, max_images)


def embed_labelled(encoder: Encoder, root: str, split: str, max_images: int | None = None,
                   corrupt: Callable[[bytes, int], bytes] | None = None,
                   desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """([N, D] image embeddings, [N] labels) of a classification split; `corrupt(image, index)` is
    applied to each image first when given."""
    samples = itertools.islice(labelled_images(root, split), max_images)
    features, labels = [], []
    progress = tqdm(total=split_size(root, split, max_images), unit="img", desc=desc or split, mininterval=1,
                    disable=None)
    with progress:
        for start, chunk in _chunks(samples):
            images = [data for _, data, _ in chunk]
            if corrupt is not None:
                images = [corrupt(data, start + i) for i, data in enumerate(images)]
            features.append(encoder.encode_images(images))
            labels += [label for *_, label in chunk]
            progress.update(len(chunk))
    if not labels:
        raise SystemExit(f"{root} has no images in its {split!r} split")
    return torch.cat(features), torch.tensor(labels)


def embed_captioned(encoder: Encoder, root: str, split: str,
                    max_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """([N, D] image embeddings, [M, D] caption embeddings, [M] the image index of each caption) of a
    caption split; every caption of a sample counts (its .json "captions", else its .txt)."""
    samples = itertools.islice((files for _, files in split_samples(root, split)), max_images)
    images, texts, owners = [], [], []
    progress = tqdm(total=split_size(root, split, max_images), unit="img", desc=split, mininterval=1, disable=None)
    with progress:
        for start, chunk in _chunks(samples):
            images.append(encoder.encode_images([image_bytes(files) for files in chunk]))
            for i, files in enumerate(chunk):
                for caption in captions(files):
                    texts.append(caption)
                    owners.append(start + i)
            progress.update(len(chunk))
    if not images:
        raise SystemExit(f"{root} has no images in its {split!r} split")
    text_features = torch.cat([encoder.encode_texts(texts[i:i + CHUNK]) for i in range(0, len(texts), CHUNK)])
    return torch.cat(images), text_features, torch.tensor(owners)


def _chunks(items: Iterable[_T]) -> Iterator[tuple[int, list[_T]]]:
    """(index of the first item, up to CHUNK items) in order."""
    iterator, start = iter(items), 0
    while chunk := list(itertools.islice(iterator, CHUNK)):
        yield start, chunk
        start += len(chunk)
