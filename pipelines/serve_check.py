"""The local chain's last stage: the packaged repository served by a real Triton, answering zero-shot queries
on the held-out set, and the demo's results table.

Everything it evaluates comes from the benchmark's lineage.json (checkpoint, classification set, templates),
so Triton is held to exactly the PyTorch evaluation the gate passed; the served model id must be the
repository's. The latency is that of one zero-shot query as a client sees it: one image through the
`clip_embed_image` ensemble over gRPC, then scored against the class prompts' embeddings (computed once).
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kubeclip.components.benchmark.step import BenchmarkOptions, benchmark
from kubeclip.components.benchmark.templates import resolve_templates
from kubeclip.components.benchmark.zeroshot import classifier
from kubeclip.components.datasets import labelled_images
from kubeclip.components.lineage import write_lineage
from kubeclip.components.options import option
from kubeclip.components.serve.encoder import TritonEncoder
from kubeclip.components.serve.triton_server import TritonServer

# what the Triton run reuses of the PyTorch benchmark's parameters, so both evaluate the same thing
_SAME_EVALUATION = ("checkpoint", "classification", "templates", "classnames", "dataset_name", "max_images")


class ServeCheckFailed(SystemExit):
    """Triton served another model, or its answers fall short of PyTorch's."""


@dataclass(kw_only=True)
class ServeCheckOptions:
    repository: str = option(help="Triton repository of the cpu flavor (kubeclip triton-repo --out)")
    benchmark: str = option(help="the PyTorch benchmark's --out: its metrics.json and lineage.json say what to "
                                 "evaluate and what Triton must match")
    export: str = option(help="the export folder, for the parity figures of export_report.json")
    out: str = option(help="results.json, results.md, triton/ (the benchmark through Triton), triton.log, "
                           "lineage.json")
    latency_queries: int = option(50, "single-image zero-shot queries timed for the latency figures")
    max_accuracy_drop: float = option(0.01, "fail when Triton's zero-shot top1 is below PyTorch's by more")


def serve_check(opts: ServeCheckOptions) -> dict:
    """Serve, query, compare; returns what results.json holds."""
    started = time.time()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    reference = json.loads((Path(opts.benchmark) / "metrics.json").read_text())
    evaluated = json.loads((Path(opts.benchmark) / "lineage.json").read_text())["parameters"]
    repository_id = json.loads((Path(opts.repository) / "lineage.json").read_text())["inputs"]["export"]["model_id"]

    with TritonServer(opts.repository, log_file=out / "triton.log") as server:
        encoder = TritonEncoder(server.grpc_url)
        try:
            served_id = encoder.client.model_id()
            if served_id != repository_id:
                raise ServeCheckFailed(f"Triton serves model {served_id}, the repository holds {repository_id}")
            served = benchmark(BenchmarkOptions(**{k: evaluated[k] for k in _SAME_EVALUATION}, out=str(out / "triton"),
                                                backend="triton", url=server.grpc_url, cache=False))
            latency_ms = query_latency(encoder, reference, evaluated, opts.latency_queries)
        finally:
            encoder.close()

    results = {"model_id": served_id, "dataset": reference["dataset"]["name"],
               "classes": len(reference["zeroshot"]["classes"]), "images": reference["zeroshot"]["images"],
               "zeroshot_top1": {"pytorch": reference["zeroshot"]["top1"], "triton": served["zeroshot"]["top1"]},
               "linear_probe_top1": reference.get("linear_probe", {}).get("top1"),
               "parity": json.loads((Path(opts.export) / "export_report.json").read_text())["artifacts"],
               "latency_ms": latency_ms}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table(results))
    write_lineage(str(out), "serve-check", {"repository": {"url": opts.repository, "model_id": repository_id},
                                            "benchmark": {"url": opts.benchmark}, "export": {"url": opts.export}},
                  asdict(opts), started)
    drop = results["zeroshot_top1"]["pytorch"] - results["zeroshot_top1"]["triton"]
    if drop > opts.max_accuracy_drop:
        raise ServeCheckFailed(f"zero-shot top1 through Triton is {drop:.3f} below PyTorch's (more than "
                               f"--max-accuracy-drop {opts.max_accuracy_drop}); see {out / 'results.md'}")
    return results


def query_latency(encoder: TritonEncoder, reference: dict, evaluated: dict, queries: int) -> dict:
    """p50/p95/max milliseconds of `queries` single-image zero-shot queries on the held-out images, and how
    many the served model classified right."""
    classes = reference["zeroshot"]["classes"]
    text = classifier(encoder, classes, resolve_templates(evaluated["templates"], reference["dataset"]["name"]))
    held_out = list(itertools.islice(labelled_images(reference["dataset"]["path"], "test"), queries))
    timings, correct = [], 0
    for _, image, label in itertools.islice(itertools.cycle(held_out), queries):  # a small set is queried again
        clock = time.perf_counter()
        predicted = int((encoder.encode_images([image]) @ text.T).argmax())
        timings.append((time.perf_counter() - clock) * 1000)
        correct += predicted == label
    timings.sort()
    return {"queries": len(timings), "correct": correct, "p50": statistics.median(timings),
            "p95": timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))], "max": timings[-1]}


def table(results: dict) -> str:
    """The demo's results as a Markdown table."""
    top1, latency = results["zeroshot_top1"], results["latency_ms"]
    rows = [("model id, as Triton reports it", results["model_id"]),
            (f"zero-shot top1 on {results['images']} held-out images, {results['classes']} compositions no "
             "training caption named (PyTorch)", f"{top1['pytorch']:.3f}"),
            ("the same through Triton (tokenizer, preprocessing, ONNX encoders, ensembles)", f"{top1['triton']:.3f}")]
    if results["linear_probe_top1"] is not None:
        rows.append(("linear probe top1 (PyTorch features)", f"{results['linear_probe_top1']:.3f}"))
    for artifact, figures in results["parity"].items():
        rows.append((f"parity of {artifact} with PyTorch: min cosine, max abs diff, zero-shot agreement",
                     f"{figures['cosine_min']:.8f}, {figures['max_abs_diff']:.1e}, "
                     f"{figures['zeroshot_agreement']:.3f}"))
    rows.append((f"latency of one zero-shot query via Triton gRPC, p50 / p95 ({latency['queries']} queries, "
                 f"{latency['correct']} right)", f"{latency['p50']:.1f} / {latency['p95']:.1f} ms"))
    return "| | |\n|---|---|\n" + "".join(f"| {what} | {value} |\n" for what, value in rows)
