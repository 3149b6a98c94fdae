"""KFP components of the benchmark step: artifacts mapped to paths, the step called, its numbers logged
to KFP's Metrics, ClassificationMetrics and HTML artifacts. `results` holds the step's whole --out
folder (metrics.json, report.html, summary.md, lineage.json), its metadata the lineage; the gate reads it."""

from kfp import dsl

from kubeclip.components.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def benchmark_classification(checkpoint: dsl.Input[dsl.Model], dataset: dsl.Input[dsl.Dataset],
                             results: dsl.Output[dsl.Artifact], metrics: dsl.Output[dsl.Metrics],
                             confusion: dsl.Output[dsl.ClassificationMetrics], report: dsl.Output[dsl.HTML],
                             subset: str = "", templates: str = "", classnames: str = "", dataset_name: str = "",
                             linear_probe: bool = False, robustness: bool = False, max_images: int = 0):
    """Zero-shot classification (and optionally linear probes and robustness) of `checkpoint` on the
    classification set at `dataset`/`subset` (e.g. subset "eval/compositions" of a synthetic prepare).
    Empty strings and max_images 0 mean the step's defaults."""
    import shutil

    from kubeclip.components.benchmark.report import headline
    from kubeclip.components.benchmark.step import BenchmarkOptions, benchmark
    from kubeclip.components.lineage import lineage_metadata

    result = benchmark(BenchmarkOptions(
        checkpoint=checkpoint.path, out=results.path,
        classification=f"{dataset.path}/{subset}" if subset else dataset.path, templates=templates or None,
        classnames=classnames or None, dataset_name=dataset_name or None, linear_probe=linear_probe,
        robustness=robustness, max_images=max_images or None))
    for key, value in headline(result).items():
        metrics.log_metric(key, value)
    confusion.log_confusion_matrix(result["zeroshot"]["classes"], result["zeroshot"]["confusion_matrix"])
    results.metadata.update(lineage_metadata(results.path))
    shutil.copyfile(f"{results.path}/report.html", report.path)


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def benchmark_retrieval(checkpoint: dsl.Input[dsl.Model], dataset: dsl.Input[dsl.Dataset],
                        results: dsl.Output[dsl.Artifact], metrics: dsl.Output[dsl.Metrics],
                        report: dsl.Output[dsl.HTML], split: str = "test", max_images: int = 0):
    """Image-text retrieval recall@1/5/10 of `checkpoint` on the caption split `split` of `dataset`."""
    import shutil

    from kubeclip.components.benchmark.report import headline
    from kubeclip.components.benchmark.step import BenchmarkOptions, benchmark
    from kubeclip.components.lineage import lineage_metadata

    result = benchmark(BenchmarkOptions(checkpoint=checkpoint.path, out=results.path, retrieval=dataset.path,
                                        split=split, max_images=max_images or None))
    for key, value in headline(result).items():
        metrics.log_metric(key, value)
    results.metadata.update(lineage_metadata(results.path))
    shutil.copyfile(f"{results.path}/report.html", report.path)


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def gate(candidate: dsl.Input[dsl.Artifact], minimums: list, max_regression: float = 0.01,
         baseline: str = "") -> bool:
    """Whether `candidate` (a benchmark's results) meets every minimum ("zeroshot.top1=0.5", ...) and does not
    regress beyond `max_regression` from the metrics.json at `baseline`; the reason is in the task's log. A
    pipeline stops the chain with `dsl.If(gate.output == True)`."""
    from kubeclip.components.benchmark.gate import GateFailed, GateOptions, gate

    try:
        print(gate(GateOptions(candidate=candidate.path, baseline=baseline or None, min=list(minimums),
                               max_regression=max_regression))["summary"])
        return True
    except GateFailed as failed:
        print(failed)
        return False
