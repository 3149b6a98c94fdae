"""dvc.yaml runs the same entry points as the CLI, with params.yaml's sections as their flags."""

import json
import os
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
