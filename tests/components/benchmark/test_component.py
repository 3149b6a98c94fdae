"""The benchmark and gate KFP components, run by KFP's local runner: the step's results plus KFP's
Metrics, ClassificationMetrics and HTML artifacts, and the gate reading the results."""

import json
from pathlib import Path
from typing import NamedTuple

from kfp import dsl

from kubeclip.components.benchmark.component import benchmark_classification, gate
from tests.components.benchmark.helpers import cifar_subset, random_checkpoint


class Outputs(NamedTuple):
    metrics: dsl.Metrics
    confusion: dsl.ClassificationMetrics
    report: dsl.HTML
    passed: bool
    failed: bool


@dsl.pipeline
def benchmark_and_gate(checkpoint_uri: str, dataset_uri: str) -> Outputs:
    checkpoint = dsl.importer(artifact_uri=checkpoint_uri, artifact_class=dsl.Model, reimport=False)
    dataset = dsl.importer(artifact_uri=dataset_uri, artifact_class=dsl.Dataset, reimport=False)
    bench = benchmark_classification(checkpoint=checkpoint.output, dataset=dataset.output, max_images=40)
    passed = gate(candidate=bench.outputs["results"], minimums=["zeroshot.top1=0.0", "zeroshot.top5=0.0"])
    failed = gate(candidate=bench.outputs["results"], minimums=["zeroshot.top1=1.01"])
    return Outputs(bench.outputs["metrics"], bench.outputs["confusion"], bench.outputs["report"], passed.output,
                   failed.output)


def test_components_log_kfp_artifacts_and_gate(kfp_local, tmp_path_factory, cifar10, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(kfp_local.parent / "cache"))  # the classifier cache, not ~/.cache
    checkpoint, dataset = random_checkpoint(tmp_path_factory), cifar_subset(tmp_path_factory, cifar10)
    outputs = benchmark_and_gate(checkpoint_uri=str(checkpoint), dataset_uri=str(dataset)).outputs

    results = next(Path(kfp_local).glob("*/benchmark-classification/results"))
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["zeroshot"]["images"] == 40
    assert {"summary.md", "lineage.json", "report.html"} <= {p.name for p in results.iterdir()}
    assert outputs["metrics"].metadata["zeroshot.top1"] == metrics["zeroshot"]["top1"]
    confusion = outputs["confusion"].metadata["confusionMatrix"]
    assert [a["displayName"] for a in confusion["annotationSpecs"]] == metrics["zeroshot"]["classes"]
    assert [r["row"] for r in confusion["rows"]] == metrics["zeroshot"]["confusion_matrix"]
    assert Path(outputs["report"].path).read_text() == (results / "report.html").read_text()
    assert list((kfp_local.parent / "cache" / "kubeclip" / "classifiers").glob("*.safetensors"))
    assert outputs["passed"] is True and outputs["failed"] is False
