"""`kubeclip benchmark` and `kubeclip gate`: flags in, the step called, its headline out."""

from __future__ import annotations

import argparse
import json

from kubeclip.components.options import add_options, options_from_args

BENCHMARK_DESCRIPTION = ("Evaluate a checkpoint on one dataset: zero-shot classification (with --linear-probe and "
                         "--robustness) on a classification set, or image-text retrieval on a caption split. "
                         "Writes metrics.json, report.html, summary.md and lineage.json to --out.")
GATE_DESCRIPTION = ("Fail (exit 1, with the reason) when the candidate's metrics are below a --min threshold or "
                    "regress more than --max-regression from the baseline's.")


def add_parser(subparsers) -> None:
    from kubeclip.components.benchmark.gate import GateOptions
    from kubeclip.components.benchmark.step import BenchmarkOptions

    parser = subparsers.add_parser("benchmark", help="zero-shot, linear probe, robustness and retrieval metrics",
                                   description=BENCHMARK_DESCRIPTION, allow_abbrev=False)
    add_options(parser, BenchmarkOptions, params_section="benchmark")
    parser.set_defaults(func=lambda args: benchmark_command(args, parser))

    gate = subparsers.add_parser("gate", help="pass or fail a benchmark's metrics.json against thresholds",
                                 description=GATE_DESCRIPTION, allow_abbrev=False)
    add_options(gate, GateOptions, params_section="gate")
    gate.set_defaults(func=lambda args: gate_command(args, gate))


def benchmark_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from kubeclip.components.benchmark.report import headline
    from kubeclip.components.benchmark.step import benchmark

    print(json.dumps(headline(benchmark(options_from_args(args, parser)))))
    return 0


def gate_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from kubeclip.components.benchmark.gate import gate

    print(gate(options_from_args(args, parser))["summary"])
    return 0
