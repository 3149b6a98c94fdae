"""The quality gate: a candidate's metrics.json against minimums and, when given, a baseline's.

Each `--min KEY=V` names a metric by its dotted path (`zeroshot.top1`, `retrieval.t2i_r5`,
`linear_probe.few_shot.16.top1`). The candidate fails on a key when it is below V, or when it is
more than --max-regression below the baseline (absolute, in the metric's own units: 0.01 is one
point of accuracy). Only the keys given with --min are gated, so adding metrics never breaks a
pipeline. A failure raises GateFailed, which exits non-zero with one line per failed check.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import fsspec

from kubeclip.components.options import option

_SLACK = 1e-9  # 0.50 - 0.49 is 0.010000000000000009 in floats; a regression of exactly the tolerance passes


@dataclass(kw_only=True)
class GateOptions:
    candidate: str = option(help="metrics.json of the model under test, or the benchmark --out folder holding it")
    baseline: str | None = option(None, "metrics.json (or folder) of the current model; without it only the "
                                        "minimums apply")
    min: list[str] = option(help="KEY=V ...: a metric's dotted path in metrics.json (zeroshot.top1) and its "
                                 "lowest acceptable value; repeat the flag for more keys")
    max_regression: float = option(0.01, "how far a --min key may fall below the baseline, absolute, in the "
                                         "metric's own units")


@dataclass
class Check:
    key: str
    minimum: float
    value: float | None
    baseline: float | None
    failure: str | None  # why it failed; None when it passed

    def line(self) -> str:
        if self.failure:
            return f"FAIL {self.failure}"
        against = f", baseline {self.baseline:.4f}" if self.baseline is not None else ""
        return f"ok   {self.key} = {self.value:.4f} (minimum {self.minimum:g}{against})"


class GateFailed(SystemExit):
    """SystemExit with the readable reason, so the CLI and a KFP component exit non-zero with it."""


def gate(opts: GateOptions) -> dict:
    """{"passed": True, "checks": [...], "summary": "..."} when every check passes; raises GateFailed otherwise."""
    if opts.max_regression < 0:
        raise SystemExit(f"--max-regression must be >= 0, got {opts.max_regression}")
    minimums = parse_minimums(opts.min)
    candidate = read_metrics(opts.candidate)
    baseline = read_metrics(opts.baseline) if opts.baseline else None
    checks = [check(key, minimum, candidate, baseline, opts.max_regression) for key, minimum in minimums.items()]
    failed = [c for c in checks if c.failure]
    verdict = (f"quality gate FAILED: {len(failed)} of {len(checks)} checks" if failed
               else f"quality gate passed: {len(checks)} checks")
    summary = "\n".join([f"{verdict} (candidate {opts.candidate}"
                         + (f", baseline {opts.baseline})" if opts.baseline else ")"),
                         *(c.line() for c in checks)])
    if failed:
        raise GateFailed(summary)
    return {"passed": True, "checks": [asdict(c) for c in checks], "summary": summary}


def check(key: str, minimum: float, candidate: dict, baseline: dict | None, max_regression: float) -> Check:
    value = lookup(candidate, key)
    if value is None:
        section = key.split(".")[0]
        known = [k for k in scalars(candidate) if k.startswith(f"{section}.")] or sorted(candidate)
        return Check(key, minimum, None, None, f"{key} is not a number in the candidate's metrics "
                                               f"(it has {', '.join(known[:12])}{', ...' if len(known) > 12 else ''})")
    before = lookup(baseline, key) if baseline is not None else None
    if not math.isfinite(value) or value < minimum:
        return Check(key, minimum, value, before, f"{key} = {value:.4f} is below the minimum {minimum:g}")
    if before is not None and before - value > max_regression + _SLACK:
        return Check(key, minimum, value, before,
                     f"{key} = {value:.4f} regressed by {before - value:.4f} from the baseline's {before:.4f} "
                     f"(allowed: {max_regression:g})")
    return Check(key, minimum, value, before, None)


def parse_minimums(items: list[str]) -> dict[str, float]:
    minimums = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None or not key.strip():
            raise SystemExit(f"--min takes KEY=VALUE, such as zeroshot.top1=0.5; got {item!r}")
        minimums[key.strip()] = number
    return minimums


def read_metrics(url: str) -> dict:
    """A metrics.json, given itself or the benchmark --out folder holding it."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.isdir(path):
        path = f"{path.rstrip('/')}/metrics.json"
    if not fs.isfile(path):
        raise SystemExit(f"no metrics at {url}: give a benchmark's metrics.json or its --out folder")
    with fs.open(path, "r") as f:
        return json.load(f)


def lookup(metrics: dict, key: str) -> float | None:
    """The number at a dotted path, or None when the path leads nowhere or not to a number."""
    value = metrics
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Every number in the metrics by its dotted path, lists left out: what the gate can address,
    and the flat form KFP's Metrics artifact takes."""
    out = {}
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{path}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)
    return out
