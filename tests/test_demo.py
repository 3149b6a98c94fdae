"""The README's main command on a fresh clone of HEAD (commit first): `make demo` installs everything into a
new venv and runs the whole local chain on the synthetic default, in under 15 minutes on 2 cores, ending
with a real Triton answering zero-shot queries and the results table. Timed stage by stage by
benchmarks/demo_stages.py, whose table is printed (`pytest -s` shows it)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

STAGES = ["prepare", "train", "benchmark", "gate", "export", "package", "serve"]
BUDGET_SECONDS = 15 * 60


@pytest.mark.slow
@pytest.mark.timeout(2 * BUDGET_SECONDS)
def test_make_demo_on_a_fresh_clone(tmp_path):
    workdir = tmp_path / "kubeclip"
    venv_bin = str(Path(sys.executable).parent)  # the clone installs its own: nothing of this venv may leak in
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    timed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_stages.py"), "--workdir", str(workdir),
                            "--json", str(tmp_path / "stages.json")], env=env, capture_output=True, text=True)
    print(timed.stdout)
    log = (workdir / "demo.log").read_text()
    assert timed.returncode == 0, log[-5000:] + timed.stderr

    phases = json.loads((tmp_path / "stages.json").read_text())["phases"]
    assert [p["name"] for p in phases] == ["install", *STAGES, "results"], "every stage runs, on a fresh clone"
    assert sum(p["seconds"] for p in phases) < BUDGET_SECONDS
    assert "--nproc-per-node 2" in yaml.safe_load((workdir / "dvc.lock").read_text())["stages"]["train"]["cmd"]

    results = json.loads((workdir / "runs" / "serve" / "results.json").read_text())
    repository = json.loads((workdir / "runs" / "repository" / "lineage.json").read_text())
    assert results["model_id"] == repository["inputs"]["export"]["model_id"]  # Triton serves what was packaged
    top1 = results["zeroshot_top1"]
    assert top1["pytorch"] >= 0.375 and abs(top1["pytorch"] - top1["triton"]) <= 0.01
    assert results["latency_ms"]["queries"] == 50 and results["latency_ms"]["correct"] >= 0.375 * 50
    printed = log[log.index("| | |"):]  # the table `make demo` ends with
    for row in (f"| model id, as Triton reports it | {results['model_id']} |",
                f"(PyTorch) | {top1['pytorch']:.3f} |", f"ensembles) | {top1['triton']:.3f} |",
                "| latency of one zero-shot query via Triton gRPC, p50 / p95"):
        assert row in printed, row
    assert all(f"parity of {artifact} with PyTorch" in printed for artifact in results["parity"])
