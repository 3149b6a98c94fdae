"""Reading what `prepare` wrote: shard lists from a manifest, samples from WebDataset tars."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator

import fsspec

IMAGE_SUFFIXES = ("jpg", "png", "webp")


def shard_urls(data: str, split: str = "train") -> tuple[str, ...]:
    """The shard URLs of one split, from a prepare output's manifest.json."""
    root = data.rstrip("/")
    with fsspec.open(f"{root}/manifest.json", "r") as f:
        manifest = json.load(f)
    if split not in manifest.get("splits", {}) or not manifest["splits"][split]["shards"]:
        raise SystemExit(f"{root}/manifest.json has no shards in split {split!r}; prepare the data first "
                         "(kubeclip prepare ...)")
    return tuple(f"{root}/{entry['name']}" for entry in manifest["splits"][split]["shards"])


def read_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of a WebDataset tar, in file order."""
    with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        key, files = None, {}
        for member in tar:
            if not member.isfile():
                continue
            stem, _, ext = member.name.rpartition("/")[2].partition(".")
            if stem != key and files:
                yield key, files
                files = {}
            key = stem
            files[ext] = tar.extractfile(member).read()
        if files:
            yield key, files


def image_bytes(files: dict[str, bytes]) -> bytes:
    return next(files[ext] for ext in IMAGE_SUFFIXES if ext in files)


def captions(files: dict[str, bytes]) -> list[str]:
    """A sample's captions: its .json "captions" (an image's every caption, as `prepare` groups them), else its .txt."""
    meta = json.loads(files["json"]) if "json" in files else {}
    return list(meta.get("captions") or [files["txt"].decode()])


def class_names(root: str) -> list[str]:
    """A classification set's class names; the label is the 0-based line number."""
    with fsspec.open(f"{root.rstrip('/')}/classes.txt", "r") as f:
        return [line.strip() for line in f if line.strip()]


def split_samples(root: str, split: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for every sample of a split, shard after shard in the manifest's order."""
    for url in shard_urls(root, split):
        yield from read_samples(url)


def labelled_images(root: str, split: str = "test") -> Iterator[tuple[str, bytes, int]]:
    """(key, image bytes, label) for every sample of a classification set's split."""
    for key, files in split_samples(root, split):
        yield key, image_bytes(files), int(files["cls"])
