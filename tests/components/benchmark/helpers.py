"""Shared by the benchmark tests: small real evaluation sets and models, each built once per test
session under pytest's base temp folder (whichever module asks first), and a strict report reader."""

from __future__ import annotations

import base64
import csv
import io
import shutil
from collections import Counter
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from kubeclip import model
from kubeclip.components.prepare import step as prepare
from kubeclip.components.train.step import TrainOptions, train


def once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    path = factory.getbasetemp() / name
    if not (path / "BUILT").is_file():
        path.mkdir(parents=True, exist_ok=True)
        build(path)
        (path / "BUILT").touch()
    return path


def trained_synthetic(factory: pytest.TempPathFactory) -> Path:
    """`data/` (the synthetic default with its eval/ sets) and `run/`: tiny-vit after 60 steps, which
    classifies the held-out compositions far above chance (about 50% against 12.5%)."""
    def build(path: Path) -> None:
        prepare.prepare_synthetic(prepare.SyntheticOptions(out=str(path / "data"), samples=1000, image_size=64,
                                                           eval_samples_per_class=25, workers=2))
        train(TrainOptions(data=str(path / "data"), out=str(path / "run"), model="tiny-vit", steps=60,
                           batch_size=64, lr=1e-3, warmup=20, workers=1, checkpoint_every=1000))
    return once(factory, "synthetic", build)


def random_checkpoint(factory: pytest.TempPathFactory) -> Path:
    """tiny-vit with seeded random weights: enough where a test is about the computation, not quality."""
    def build(path: Path) -> None:
        torch.manual_seed(0)
        model.save(model.build("tiny-vit"), path)
    return once(factory, "random-tiny-vit", build)


def cifar_subset(factory: pytest.TempPathFactory, cifar10: Path, per_class: int = 60,
                 probe_fraction: float = 0.3) -> Path:
    """The first `per_class` images of each CIFAR-10 class from ../shared/data, prepared at 64 px."""
    def build(path: Path) -> None:
        root = path / "raw"
        root.mkdir()
        with open(cifar10 / "labels.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        seen: Counter[str] = Counter()
        kept = []
        for row in rows:
            seen[row["label"]] += 1
            if seen[row["label"]] <= per_class:
                kept.append(row)
        with open(root / "labels.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label", "class_name"])
            writer.writeheader()
            writer.writerows(kept)
        (root / "classes.txt").write_text((cifar10 / "classes.txt").read_text())
        for row in kept:  # copied: prepare refuses symlinks that lead out of the root
            (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cifar10 / row["path"], root / row["path"])
        prepare.prepare_classification(prepare.ClassificationOptions(
            root=str(root), out=str(path / "set"), image_size=64, probe_fraction=probe_fraction, workers=2))
    return once(factory, f"cifar-{per_class}-{probe_fraction}", build) / "set"


def flickr_subset(factory: pytest.TempPathFactory, flickr8k: Path, images: int = 100) -> Path:
    """The first `images` images of Flickr8k's official test split with all their captions, prepared at 64 px."""
    def build(path: Path) -> None:
        names = (flickr8k / "split_test.txt").read_text().split()[:images]
        (path / "split_test.txt").write_text("\n".join(names) + "\n")
        wanted = set(names)
        with open(flickr8k / "captions.tsv") as f:
            header, *lines = f.read().splitlines()
        kept = [line for line in lines if line.split("\t")[0] in wanted]
        (path / "captions.tsv").write_text("\n".join([header, *kept]) + "\n")
        prepare.prepare_captions(prepare.CaptionsOptions(
            captions=str(path / "captions.tsv"), images=str(flickr8k / "images"), out=str(path / "set"),
            image_size=64, split_files=[f"test={path / 'split_test.txt'}"], workers=2))
    return once(factory, f"flickr-{images}", build) / "set"


VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictHTML(HTMLParser):
    """Records mis-nested or unclosed elements and the image of each <figure id=...>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.doctype, self.open, self.errors, self.figures, self.figure = False, [], [], {}, None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)
        if tag == "figure":
            self.figure = attrs.get("id")
        if tag == "img" and self.figure:
            self.figures[self.figure] = attrs.get("src", "")
            if not attrs.get("alt"):
                self.errors.append(f"<img> in figure {self.figure} has no alt text")

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()
        if tag == "figure":
            self.figure = None


def report_plots(path: Path) -> dict[str, Image.Image]:
    """The plots of a valid, self-contained report.html by figure id; fails the test on invalid HTML."""
    parser = StrictHTML()
    parser.feed(path.read_text())
    parser.close()
    assert parser.doctype, "no <!DOCTYPE html>"
    assert not parser.errors and not parser.open, (parser.errors, parser.open)
    plots = {}
    for figure, src in parser.figures.items():
        prefix, _, data = src.partition(",")
        assert prefix == "data:image/png;base64", f"{figure}: not an embedded PNG"
        plots[figure] = Image.open(io.BytesIO(base64.b64decode(data)))
        plots[figure].load()
        assert plots[figure].width > 100 and plots[figure].height > 100
    return plots
