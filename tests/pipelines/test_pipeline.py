"""The Kubeflow pipeline: its committed IR is current, and it runs end to end under kfp.local, giving
the numbers `dvc repro` gives with the same parameters and seeds."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from kubeclip.components.images import TENSORRT_IMAGE, TRITON_BASE, TRITON_RELEASE
from kubeclip.pipelines.run import COMPILED, compile_pipeline, run_local
from tests.conftest import ROOT

TINY = {"samples": 48, "image_size": 32, "eval_samples_per_class": 2, "steps": 4, "batch_size": 8, "warmup": 2,
        "minimums": ["zeroshot.top1=0.0"], "fp16": False, "flavor": "cpu", "deploy_dry_run": True}


def test_committed_ir_is_current(tmp_path):
    fresh = compile_pipeline(tmp_path / "pipeline.yaml")
    assert list(yaml.safe_load_all(fresh.read_text())) == list(yaml.safe_load_all(COMPILED.read_text())), \
        "pipelines/kubeclip_pipeline.yaml is stale: run `kubeclip pipeline compile` and commit it"


def test_tensorrt_runs_on_a_gpu_node_in_the_matching_tensorrt_release_and_is_checked_before_packaging():
    spec, platform = yaml.safe_load_all(COMPILED.read_text())
    engines = spec["deploymentSpec"]["executors"]["exec-export-tensorrt"]["container"]
    assert engines["image"] == TENSORRT_IMAGE and TRITON_RELEASE in TRITON_BASE
    assert engines["resources"]["accelerator"] == {"count": "1", "resourceCount": "1", "resourceType": "nvidia.com/gpu",
                                                   "type": "nvidia.com/gpu"}
    assert engines["command"][-1].endswith('bash "$1/trt/build.sh"')  # the script the export step wrote
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-export-tensorrt"]
    assert kubernetes["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    tasks = _all_tasks(spec)
    assert tasks["export-tensorrt-check"]["inputs"]["artifacts"]["engines"]["taskOutputArtifact"]["producerTask"] == \
        "export-tensorrt"
    plans = tasks["package-2"]["inputs"]["artifacts"]["exported"]  # the TensorRT branch packages checked plans only
    assert plans == {"taskOutputArtifact": {"outputArtifactKey": "checked", "producerTask": "export-tensorrt-check"}}


def _all_tasks(spec: dict) -> dict:
    """Every task of the pipeline's DAGs, by name."""
    tasks = {}
    for dag in [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]:
        tasks.update(dag["tasks"])
    return tasks


def test_pipeline_runs_locally_like_dvc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "kfp"
    run_local({**TINY, "partitions": 1}, root)
    run = next(root.iterdir())
    for task in ("prepare-merge", "train", "benchmark-classification", "export", "package"):
        assert (run / task).is_dir(), f"task {task} did not run"
    assert (run / "package" / "repository" / "clip_embed_text" / "config.pbtxt").is_file()
    (repository,) = json.loads((run / "package" / "executor_output.json").read_text())["artifacts"]["repository"][
        "artifacts"]
    lineage = repository["metadata"]["lineage"]  # the artifact's metadata: its steps, back to each partition
    assert [s["step"] for s in lineage] == ["triton-repo", "export", "train", "prepare merge", "prepare synthetic"]
    assert lineage[0]["inputs"]["export"]["model_id"] == repository["metadata"]["kubeclip_model_id"]
    pipeline_metrics = json.loads((run / "benchmark-classification" / "results" / "metrics.json").read_text())

    dvc_metrics = dvc_repro(tmp_path / "dvc")
    for task in ("zeroshot", "linear_probe"):
        assert _scores(pipeline_metrics[task]) == _scores(dvc_metrics[task]), task


def dvc_repro(workdir: Path) -> dict:
    """dvc repro of this repository's dvc.yaml with TINY's values in params.yaml."""
    workdir.mkdir()
    shutil.copy(ROOT / "dvc.yaml", workdir)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(samples=TINY["samples"], image_size=TINY["image_size"],
                             eval_samples_per_class=TINY["eval_samples_per_class"])
    params["train"].update(steps=TINY["steps"], batch_size=TINY["batch_size"], warmup=TINY["warmup"])
    params["torchrun"]["nproc_per_node"] = 1  # the pipeline's default
    params["gate"]["min"] = TINY["minimums"]
    params["export"]["fp16"] = TINY["fp16"]
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "benchmark"]):
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((workdir / "runs" / "benchmark" / "metrics.json").read_text())


def _scores(section: dict) -> dict:
    return {k: v for k, v in section.items() if isinstance(v, (int, float)) and "seconds" not in k}
