"""dvc.yaml runs the same entry points as the CLI, with params.yaml's sections as their flags."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT


def test_dvc_repro_runs_the_local_pipeline(tmp_path):
    """prepare -> train (2 processes) -> benchmark -> gate -> export -> package -> serve (a real Triton), from
    params.yaml."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(samples=24, eval_samples_per_class=1, shard_size=10)
    params["train"].update(steps=3, batch_size=8, workers=0, checkpoint_every=2)
    params["gate"]["min"] = ["zeroshot.top1=0.0"]  # three steps learn nothing; the chain must still run
    # an untrained model's classes are near ties, which ONNX's last bits may break otherwise than PyTorch's
    params["serve_check"].update(latency_queries=5, max_accuracy_drop=1.0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro"]):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((tmp_path / "runs" / "data" / "manifest.json").read_text())
    assert manifest["rows_in"] == 4 * 24 == manifest["rows_written"]
    assert json.loads((tmp_path / "runs" / "data" / "lineage.json").read_text())["parameters"]["shard_size"] == 10
    assert (tmp_path / "runs" / "train" / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    train_lineage = json.loads((tmp_path / "runs" / "train" / "lineage.json").read_text())
    assert train_lineage["parameters"]["batch_size"] == 8 and train_lineage["inputs"]["data"]["url"] == "runs/data"
    metrics = json.loads((tmp_path / "runs" / "benchmark" / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "compositions" and "linear_probe" in metrics
    assert json.loads((tmp_path / "runs" / "export" / "export_report.json").read_text())["gates"]
    assert (tmp_path / "runs" / "repository" / "clip_embed_text" / "config.pbtxt").is_file()
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert "--nproc-per-node 2" in lock["stages"]["train"]["cmd"]
    results = json.loads((tmp_path / "runs" / "serve" / "results.json").read_text())
    assert results["model_id"] == metrics["model"]["id"] and results["images"] == metrics["zeroshot"]["images"]
    served = json.loads((tmp_path / "runs" / "serve" / "triton" / "metrics.json").read_text())
    assert served["model"]["backend"] == "triton" and results["zeroshot_top1"]["triton"] == served["zeroshot"]["top1"]
    assert results["latency_ms"]["queries"] == 5 and 0 < results["latency_ms"]["p50"] <= results["latency_ms"]["p95"]
    assert "latency of one zero-shot query" in (tmp_path / "runs" / "serve" / "results.md").read_text()
    # dvc plots: the loss curve from training's logged steps, the zero-shot (and probe) recall of every class
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    plots = {name: plot[0]["content"]["data"]["values"] for name, plot in json.loads(shown.stdout)["data"].items()}
    curve = plots["runs/train/curve.json"]
    assert [p["step"] for p in curve] == [r["step"] for r in map(json.loads, (
        tmp_path / "runs" / "train" / "metrics.jsonl").read_text().splitlines())] and all("loss" in p for p in curve)
    per_class = plots["runs/benchmark/per_class.json"]
    assert [p["class"] for p in per_class] == metrics["zeroshot"]["classes"]
    assert [p["zeroshot"] for p in per_class] == metrics["zeroshot"]["per_class_recall"]
    assert [p["linear_probe"] for p in per_class] == metrics["linear_probe"]["per_class_recall"]
    # the stage fails the chain when Triton falls short of PyTorch (here: any shortfall, even none, is too much)
    short = subprocess.run(["kubeclip", "pipeline", "serve-check", "--repository", "runs/repository", "--benchmark",
                            "runs/benchmark", "--export", "runs/export", "--out", "runs/short",
                            "--latency-queries", "1", "--max-accuracy-drop", "-1"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert short.returncode != 0 and "below PyTorch's" in short.stderr, short.stderr

    # an experiment on the committed chain: one parameter changed, what depends on it rerun
    git = ["git", "-c", "user.name=kubeclip", "-c", "user.email=kubeclip@localhost"]
    for command in ([*git, "add", "-A"], [*git, "commit", "-q", "-m", "baseline"],
                    ["dvc", "exp", "run", "-S", "train.lr=0.002", "train"]):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "runs" / "train" / "lineage.json").read_text())["parameters"]["lr"] == 0.002


def test_a_failed_gate_stops_the_chain_before_anything_is_built_or_served(tmp_path):
    """gate is upstream of export, package and serve; with a candidate below params.yaml's minimum, `dvc repro serve`
    runs the gate, which fails, and nothing after it: the stages before it stand in, committed as done."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dvc", *args], cwd=tmp_path, env=env, capture_output=True, text=True)

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert dvc("init", "-q").returncode == 0
    dag = dvc("dag", "--dot")
    edges = re.findall(r'"([\w-]+)" -> "([\w-]+)"', dag.stdout)
    assert dag.returncode == 0 and edges, dag.stdout + dag.stderr
    for stage in ("export", "package", "serve"):
        assert "gate" in _upstream(stage, edges), f"{stage} does not wait for the gate"

    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]
    before = [name for name in stages if name != "gate" and name not in _downstream("gate", edges)]
    for name in before:
        entries = [e for key in ("outs", "plots", "metrics") for e in stages[name].get(key, [])]
        for path in [tmp_path / (next(iter(e)) if isinstance(e, dict) else e) for e in entries]:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix:
                path.write_text("{}\n")
            else:
                path.mkdir(exist_ok=True)
                (path / "stand-in").write_text("")
    for name in before:
        for dep in map(tmp_path.joinpath, stages[name].get("deps", [])):
            if not dep.exists():  # inside an upstream output folder (runs/data/eval/...)
                dep.mkdir(parents=True)
                (dep / "stand-in").write_text("")
    (tmp_path / "runs" / "benchmark" / "metrics.json").write_text(json.dumps({"zeroshot": {"top1": 0.0}}))
    committed = dvc("commit", "-f", "-q", *before)
    assert committed.returncode == 0, committed.stderr

    repro = dvc("repro", "serve")
    assert repro.returncode != 0 and "zeroshot.top1 = 0.0000 is below the minimum" in repro.stderr, repro.stderr
    assert "Running stage 'gate'" in repro.stdout and "Running stage 'export'" not in repro.stdout, repro.stdout
    assert not any((tmp_path / "runs" / name).exists() for name in ("export", "repository", "serve"))


def _upstream(stage: str, edges: list[tuple[str, str]]) -> set[str]:
    parents = {a for a, b in edges if b == stage}
    return parents.union(*(_upstream(p, edges) for p in parents))


def _downstream(stage: str, edges: list[tuple[str, str]]) -> set[str]:
    children = {b for a, b in edges if a == stage}
    return children.union(*(_downstream(c, edges) for c in children))
