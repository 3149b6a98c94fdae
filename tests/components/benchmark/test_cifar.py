"""CIFAR-10 from ../shared/data end to end through `kubeclip benchmark`: zero-shot, linear probes and
the robustness sweep on a small model; the sections, their shapes, the report and the lineage."""

import json
from pathlib import Path

import pytest

from kubeclip.components.benchmark.robustness import CORRUPTIONS
from kubeclip.components.benchmark.step import BenchmarkOptions, benchmark
from kubeclip.components.cli import main
from kubeclip.components.lineage import file_sha256
from tests.components.benchmark.helpers import cifar_subset, random_checkpoint, report_plots


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory, cifar10) -> Path:
    return cifar_subset(tmp_path_factory, cifar10)


def test_zeroshot_probe_and_robustness_end_to_end(checkpoint, cifar, tmp_path):
    out = tmp_path / "bench"
    assert main(["benchmark", "--checkpoint", str(checkpoint), "--out", str(out), "--classification", str(cifar),
                 "--linear-probe", "--robustness", "--max-images", "120", "--cache-dir", str(tmp_path / "cache")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())

    zeroshot = metrics["zeroshot"]
    assert zeroshot["images"] == 120 and len(zeroshot["classes"]) == 10 and zeroshot["templates"] == 18
    assert sum(map(sum, zeroshot["confusion_matrix"])) == 120
    for key in ("top1", "top5", "mean_per_class_recall", "single_template_top1"):
        assert 0 <= zeroshot[key] <= 1
    assert zeroshot["top1"] <= zeroshot["top5"]

    probe = metrics["linear_probe"]
    assert 0 <= probe["top1"] <= 1 and probe["train_samples"] == 120 and len(probe["per_class_recall"]) == 10
    assert list(probe["few_shot"]) == ["1", "4", "16"] and probe["few_shot"]["1"]["train_samples"] == 10
    assert all(v["train_samples"] <= 10 * int(k) and 0 <= v["top1"] <= 1 for k, v in probe["few_shot"].items())

    robust = metrics["robustness"]
    assert set(robust["corruptions"]) == set(CORRUPTIONS)
    for entry in robust["corruptions"].values():
        for method in ("zeroshot", "linear_probe"):
            assert list(entry[method]) == ["1", "2", "3", "4", "5"]
            assert all(0 <= v <= 1 for v in entry[method].values())
    assert robust["clean"] == {"zeroshot": zeroshot["top1"], "linear_probe": probe["top1"]}

    assert set(report_plots(out / "report.html")) == {"per-class-accuracy", "confusion-matrix",
                                                      "zeroshot-vs-probe", "accuracy-vs-severity"}
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["inputs"]["checkpoint"]["sha256"] == file_sha256(str(checkpoint / "model.safetensors"))
    assert lineage["inputs"]["classification"]["manifest_sha256"] == file_sha256(str(cifar / "manifest.json"))
    assert metrics["model"]["id"] == lineage["inputs"]["checkpoint"]["sha256"][:12]


def test_sections_only_when_requested_and_classifier_cached(checkpoint, cifar, tmp_path):
    def run(name: str) -> dict:
        return benchmark(BenchmarkOptions(checkpoint=str(checkpoint), out=str(tmp_path / name),
                                          classification=str(cifar), max_images=50,
                                          cache_dir=str(tmp_path / "cache")))

    first, second = run("first"), run("second")
    assert "linear_probe" not in first and "robustness" not in first and "retrieval" not in first
    assert (first["timing"]["classifier_cached"], second["timing"]["classifier_cached"]) == (False, True)
    assert first["zeroshot"] == second["zeroshot"]
    assert set(report_plots(tmp_path / "first" / "report.html")) == {"per-class-accuracy", "confusion-matrix"}


def test_linear_probe_without_probe_split_fails_clearly(checkpoint, tmp_path_factory, cifar10, tmp_path):
    no_probe = cifar_subset(tmp_path_factory, cifar10, per_class=5, probe_fraction=0)
    with pytest.raises(SystemExit, match="--probe-fraction 0"):
        benchmark(BenchmarkOptions(checkpoint=str(checkpoint), out=str(tmp_path), classification=str(no_probe),
                                   linear_probe=True, cache=False))


@pytest.mark.parametrize("flags, message", [
    ([], "one benchmark run evaluates one dataset"),
    (["--classification", "A", "--retrieval", "B"], "one benchmark run evaluates one dataset"),
    (["--retrieval", "B", "--linear-probe"], "--linear-probe"),
])
def test_one_dataset_per_run(flags, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(["benchmark", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "out"), *flags])
