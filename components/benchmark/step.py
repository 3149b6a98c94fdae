"""The benchmark step: one checkpoint on one dataset.

A classification set gets zero-shot classification (and, when asked, a linear probe and the
robustness sweep); a caption split gets image-text retrieval. Every number comes from embeddings
through the Encoder interface, so another backend (ONNX Runtime, Triton) is scored by the same code.
Outputs in --out: metrics.json nested by task, report.html, summary.md, lineage.json and, for a
classification set, per_class.json (each class's recall, for `dvc plots`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec
import torch

from kubeclip import model
from kubeclip.components.benchmark import retrieval, robustness
from kubeclip.components.benchmark.cache import DEFAULT_DIR, ClassifierCache
from kubeclip.components.benchmark.encoders import Encoder, TorchEncoder
from kubeclip.components.benchmark.features import embed_labelled, split_size
from kubeclip.components.benchmark.probe import linear_probe
from kubeclip.components.benchmark.report import render_html, render_markdown
from kubeclip.components.benchmark.robustness import CORRUPTIONS, SEVERITIES
from kubeclip.components.benchmark.templates import BUILTIN, resolve_classnames, resolve_templates
from kubeclip.components.benchmark.zeroshot import scores, text_classifier
from kubeclip.components.datasets import class_names
from kubeclip.components.lineage import file_sha256, write_lineage
from kubeclip.components.options import option
from kubeclip.components.storage import local_copy
from kubeclip.components.train.checkpoints import local_weights


@dataclass(kw_only=True)
class BenchmarkOptions:
    checkpoint: str = option(help="weights to evaluate: a train --out folder, a checkpoint folder or a weights "
                                  "file (anything model.load accepts)")
    out: str = option(help="output folder or fsspec URL: metrics.json, report.html, summary.md, lineage.json")
    classification: str | None = option(None, "classification set (prepare classification, or a synthetic "
                                               "eval/ set) for zero-shot, linear probe and robustness")
    retrieval: str | None = option(None, "caption shards (prepare captions) for image-text retrieval")
    split: str = option("test", "the split of --retrieval to retrieve in")
    templates: str | None = option(None, f"prompt templates: a built-in set ({', '.join(BUILTIN)}) or a JSON "
                                         "file in LAION CLIP_benchmark's format; default: the built-in set named "
                                         "like the dataset, else 'ensemble'")
    classnames: str | None = option(None, "JSON file of class names in CLIP_benchmark's format; default: the "
                                          "set's classes.txt")
    dataset_name: str | None = option(None, "the entry to use in --templates/--classnames files that hold "
                                            "several; default: the dataset folder's name")
    linear_probe: bool = option(False, "also fit logistic-regression probes on the set's probe/ split "
                                       "(all of it, and --few-shot examples per class)")
    robustness: bool = option(False, "also score the test split under corruptions at each severity")
    max_images: int | None = option(None, "at most this many images per split (default: all)")
    few_shot: list[int] = option([1, 4, 16], "examples per class of the few-shot probes")
    corruptions: list[str] = option(list(CORRUPTIONS), "corruptions of the robustness sweep")
    severities: list[int] = option(list(SEVERITIES), "severities (1-5) of the robustness sweep")
    cache: bool = option(True, "reuse text classifiers from --cache-dir (keyed by weights, classes, templates)")
    cache_dir: str = option(DEFAULT_DIR, "where text classifiers are cached")
    backend: str = option("torch", "what computes the embeddings: torch (the checkpoint), onnx (the --export "
                                    "folder's towers, ONNX Runtime) or triton (a served repository at --url)")
    export: str | None = option(None, "with --backend onnx: the export folder")
    url: str | None = option(None, "with --backend triton: the server, HOST:PORT")
    protocol: str = option("grpc", "with --backend triton: grpc or http")
    batch_size: int = option(256, "images or texts per forward pass")
    device: str = option("auto", "auto (a GPU when there is one), cpu, cuda, cuda:N")
    seed: int = option(0, "seeds few-shot sampling, cross-validation folds and corruption noise")


def benchmark(opts: BenchmarkOptions) -> dict:
    """Evaluate `opts.checkpoint` on one dataset; returns what it writes to metrics.json."""
    started = time.time()
    _check(opts)
    with local_weights(opts.checkpoint) as (weights_url, weights), _encoder(opts, weights) as encoder:
        weights_sha256 = file_sha256(str(weights))
        metrics: dict = {"model": {"id": weights_sha256[:12], "checkpoint": str(opts.checkpoint),
                                   "backend": opts.backend}}
        inputs = {"checkpoint": {"url": weights_url, "sha256": weights_sha256}}
        if opts.classification:
            # each backend computes its own classifier: the cache must not hand one backend's to another
            cache = ClassifierCache(opts.cache_dir, f"{weights_sha256}-{opts.backend}") if opts.cache else None
            metrics.update(classification(encoder, opts, cache))
            inputs["classification"] = _dataset_input(opts.classification)
            for flag in ("templates", "classnames"):
                url = getattr(opts, flag)
                if url and url not in BUILTIN:
                    inputs[flag] = {"url": url, "sha256": file_sha256(url)}
        else:
            root = opts.retrieval.rstrip("/")
            metrics["dataset"] = {"name": _name(root), "path": root, "split": opts.split, "task": "retrieval"}
            metrics["retrieval"] = retrieval.evaluate(encoder, root, opts.split, opts.max_images)
            inputs["retrieval"] = _dataset_input(root)
    metrics.setdefault("timing", {})["total_seconds"] = time.time() - started

    _write(opts.out, "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _write(opts.out, "report.html", render_html(metrics))
    _write(opts.out, "summary.md", render_markdown(metrics))
    if "zeroshot" in metrics:
        _write(opts.out, "per_class.json", json.dumps(per_class_rows(metrics), indent=1) + "\n")
    write_lineage(opts.out, "benchmark", inputs, asdict(opts), started)
    return metrics


def per_class_rows(metrics: dict) -> list[dict]:
    """Each class's zero-shot (and linear-probe) recall, one record per class: what `dvc plots` draws."""
    rows = [{"class": c, "zeroshot": r} for c, r in zip(metrics["zeroshot"]["classes"],
                                                         metrics["zeroshot"]["per_class_recall"])]
    for row, recall in zip(rows, metrics.get("linear_probe", {}).get("per_class_recall", [])):
        row["linear_probe"] = recall
    return rows


def classification(encoder: Encoder, opts: BenchmarkOptions, cache: ClassifierCache | None) -> dict:
    """The zero-shot, linear-probe and robustness sections (and dataset and timing) for a classification set."""
    root = opts.classification.rstrip("/")
    name = opts.dataset_name or _name(root)
    classnames = resolve_classnames(opts.classnames, name, class_names(root))
    templates = resolve_templates(opts.templates, name)
    if opts.linear_probe and split_size(root, "probe") == 0:
        raise SystemExit(f"--linear-probe fits on the set's probe/ split, and {root} has none (it was prepared "
                         "with --probe-fraction 0); prepare it again with e.g. --probe-fraction 0.2, or drop "
                         "--linear-probe")

    cached = cache is not None and cache.path(classnames, templates).is_file()
    clock = time.perf_counter()
    text = text_classifier(encoder, classnames, templates, cache)
    classifier_seconds, clock = time.perf_counter() - clock, time.perf_counter()
    test = embed_labelled(encoder, root, "test", opts.max_images, desc="zero-shot")
    zeroshot = {**scores(*test, text), "images": len(test[1]), "classes": classnames, "templates": len(templates)}
    images_per_second = len(test[1]) / (time.perf_counter() - clock)
    result = {"dataset": {"name": name, "path": root, "split": "test", "task": "classification"},
              "zeroshot": zeroshot}

    probe = None
    if opts.linear_probe:
        train = embed_labelled(encoder, root, "probe", opts.max_images, desc="probe")
        result["linear_probe"], probe = linear_probe(train, test, len(classnames), opts.few_shot, opts.seed)
    if opts.robustness:
        clean = {"zeroshot": zeroshot["top1"], **({"linear_probe": result["linear_probe"]["top1"]} if probe else {})}
        result["robustness"] = robustness.evaluate(encoder, root, text, probe, clean, opts.corruptions,
                                                   opts.severities, "test", opts.max_images, opts.seed)
    result["timing"] = {"classifier_seconds": classifier_seconds, "classifier_cached": cached,
                        "zeroshot_images_per_second": images_per_second}
    return result


def _check(opts: BenchmarkOptions) -> None:
    if bool(opts.classification) == bool(opts.retrieval):
        raise SystemExit("one benchmark run evaluates one dataset: give --classification DIR or --retrieval DIR")
    if opts.retrieval:
        given = [flag for flag, value in (("--linear-probe", opts.linear_probe), ("--robustness", opts.robustness),
                                          ("--templates", opts.templates), ("--classnames", opts.classnames))
                 if value]
        if given:
            raise SystemExit(f"{', '.join(given)} apply to --classification sets, not to --retrieval")
    needs = {"torch": None, "onnx": ("--export", opts.export), "triton": ("--url", opts.url)}
    if opts.backend not in needs:
        raise SystemExit(f"--backend must be torch, onnx or triton, not {opts.backend!r}")
    if needs[opts.backend] and not needs[opts.backend][1]:
        raise SystemExit(f"--backend {opts.backend} needs {needs[opts.backend][0]}")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _name(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1]


@contextmanager
def _encoder(opts: BenchmarkOptions, weights: Path) -> Iterator[Encoder]:
    """The backend's encoder, while the local copies of remote files it reads (a tokenizer, on first use) last."""
    if opts.backend == "torch":
        yield TorchEncoder(model.load(weights), _device(opts.device), opts.batch_size)
    elif opts.backend == "onnx":
        from kubeclip.components.benchmark.onnx_encoder import OnnxEncoder

        with local_copy(opts.export) as export:
            yield OnnxEncoder(export, batch_size=opts.batch_size)
    else:
        from kubeclip.components.serve.encoder import TritonEncoder

        yield TritonEncoder(opts.url, opts.protocol)


def _dataset_input(root: str) -> dict:
    return {"url": root, "manifest_sha256": file_sha256(f"{root.rstrip('/')}/manifest.json")}


def _write(out: str, name: str, text: str) -> None:
    fs, path = fsspec.core.url_to_fs(out)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path.rstrip('/')}/{name}", "w") as f:
        f.write(text)
