"""The quality gate passes and fails as docs/contracts.md ("Benchmark output") specifies: minimums on dotted
paths, an absolute regression tolerance against a baseline on the same keys, a readable reason and a non-zero
exit."""

import json
import os
import subprocess
import sys

import pytest

from kubeclip.components.benchmark.gate import GateFailed, GateOptions, gate
from kubeclip.components.cli import main
from tests.conftest import ROOT

CANDIDATE = {"zeroshot": {"top1": 0.62, "top5": 0.91, "classes": ["a", "b"]},
             "linear_probe": {"top1": 0.70, "few_shot": {"16": {"top1": 0.55}}},
             "retrieval": {"i2t_r1": 0.30}}
BASELINE = {"zeroshot": {"top1": 0.63, "top5": 0.95}, "linear_probe": {"top1": 0.70}}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "candidate").mkdir()
    (tmp_path / "candidate" / "metrics.json").write_text(json.dumps(CANDIDATE))
    (tmp_path / "baseline.json").write_text(json.dumps(BASELINE))
    return tmp_path / "candidate" / "metrics.json", tmp_path / "baseline.json"


def run(candidate, minimums, baseline=None, max_regression=0.01) -> dict:
    return gate(GateOptions(candidate=str(candidate), baseline=str(baseline) if baseline else None, min=minimums,
                            max_regression=max_regression))


def test_passes_above_minimums_and_within_tolerance(files):
    candidate, baseline = files
    result = run(candidate, ["zeroshot.top1=0.5", "linear_probe.few_shot.16.top1=0.5"], baseline)
    assert result["passed"] and [c["key"] for c in result["checks"]] == ["zeroshot.top1",
                                                                          "linear_probe.few_shot.16.top1"]
    # 0.63 -> 0.62 is exactly the tolerance; the probe's key is not in the baseline, so only its minimum applies
    assert run(candidate.parent, ["zeroshot.top1=0.62"], baseline)["passed"]  # a benchmark --out folder works too


def test_fails_below_a_minimum(files):
    with pytest.raises(GateFailed, match=r"FAIL zeroshot.top1 = 0.6200 is below the minimum 0.7") as failure:
        run(files[0], ["zeroshot.top1=0.7", "retrieval.i2t_r1=0.1"])
    assert failure.value.code.startswith("quality gate FAILED: 1 of 2 checks")
    assert "ok   retrieval.i2t_r1 = 0.3000" in failure.value.code


def test_fails_on_a_regression_beyond_the_tolerance(files):
    candidate, baseline = files
    with pytest.raises(GateFailed, match=r"zeroshot.top5 = 0.9100 regressed by 0.0400 from the baseline's 0.9500"):
        run(candidate, ["zeroshot.top5=0.5"], baseline)
    assert run(candidate, ["zeroshot.top5=0.5"], baseline, max_regression=0.05)["passed"]
    with pytest.raises(GateFailed, match="regressed by 0.0100"):
        run(candidate, ["zeroshot.top1=0.5"], baseline, max_regression=0.005)


def test_only_keys_given_with_min_are_gated(files):
    candidate, baseline = files
    assert run(candidate, ["linear_probe.top1=0.6"], baseline)["passed"]  # top5 regressed, but is not gated


@pytest.mark.parametrize("minimum, message", [
    ("zeroshot.top2=0.5", r"zeroshot.top2 is not a number in the candidate's metrics \(it has zeroshot.top1, "
                          r"zeroshot.top5\)"),
    ("zeroshot.classes=0.5", "zeroshot.classes is not a number"),
])
def test_fails_on_a_key_the_candidate_lacks(files, minimum, message):
    with pytest.raises(GateFailed, match=message):
        run(files[0], [minimum])


@pytest.mark.parametrize("minimum", ["zeroshot.top1", "zeroshot.top1=high", "=0.5"])
def test_malformed_minimum_is_refused(files, minimum):
    with pytest.raises(SystemExit, match="--min takes KEY=VALUE"):
        run(files[0], [minimum])


def test_cli_repeats_min_and_exits_non_zero_with_the_reason(files):
    candidate, baseline = files
    assert main(["gate", "--candidate", str(candidate), "--min", "zeroshot.top1=0.5", "--min", "zeroshot.top5=0.9",
                 "--baseline", str(baseline), "--max-regression", "0.05"]) == 0
    process = subprocess.run([sys.executable, "-m", "kubeclip.components.cli", "gate", "--candidate", str(candidate),
                              "--min", "zeroshot.top1=0.5", "--min", "zeroshot.top5=0.99"], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert process.returncode == 1
    assert "quality gate FAILED: 1 of 2 checks" in process.stderr
    assert "FAIL zeroshot.top5 = 0.9100 is below the minimum 0.99" in process.stderr
