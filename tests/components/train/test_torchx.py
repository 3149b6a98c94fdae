"""The TorchX component: a real `torchx run -s local_cwd` trains; the AppDef sizes a cluster run."""

import json
import os
import subprocess
import sys
from pathlib import Path

from kubeclip.components.prepare import step as prepare
from kubeclip.components.train.torchx_app import train
from tests.conftest import ROOT


def test_torchx_local_run_trains(tmp_path):
    data = tmp_path / "data"
    prepare.prepare_synthetic(prepare.SyntheticOptions(out=str(data), samples=32, image_size=32, shard_size=16,
                                                       eval_samples_per_class=1, workers=1))
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "torchx"), "run", "-s", "local_cwd", "components/train/torchx_app.py:train",
                             "--nproc_per_node", "2", "--", "--data", str(data), "--out", str(tmp_path / "run"),
                             "--steps", "3", "--batch-size", "4", "--workers", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert json.loads((tmp_path / "run" / "lineage.json").read_text())["parameters"]["world_size"] == 2


def test_appdef_sizes_a_cluster_run():
    app = train("--data=s3://b/d", "--out=s3://b/r", nnodes=4, nproc_per_node=8, gpu=8, max_retries=2)
    (role,) = app.roles
    assert role.num_replicas == 4 and role.resource.gpu == 8 and role.max_retries == 2
    command = " ".join([role.entrypoint, *role.args])
    assert "--nproc_per_node 8" in command.replace("=", " ") and "-m kubeclip.components.train" in command
    assert command.endswith("--data=s3://b/d --out=s3://b/r --resume latest")
