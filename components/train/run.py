"""Where a training run happens: in this process, under a local torchrun, or as a PyTorchJob on the cluster.
Whichever, the run's last metrics record is read back from its `metrics.jsonl`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import fsspec

from kubeclip.components.options import to_argv
from kubeclip.components.train.launcher import RUN_LABEL, LaunchOptions, launch
from kubeclip.components.train.step import TrainOptions, train


def run(opts: TrainOptions, nproc_per_node: int = 1, max_restarts: int = 0,
        cluster: LaunchOptions | None = None) -> dict:
    if cluster is not None:
        cluster.train_args = to_argv(opts)
        launch(cluster)
    elif nproc_per_node > 1:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 f"--nproc-per-node={nproc_per_node}", f"--max-restarts={max_restarts}",
                                 "-m", "kubeclip.components.train", *to_argv(opts)])
        if result.returncode:
            raise SystemExit(f"training under torchrun failed (exit code {result.returncode}); see its log above")
    else:
        train(opts)
    return last_record(opts.out)


def run_task(opts: TrainOptions, data_uri: str, out_uri: str, nproc_per_node: int, namespace: str, nodes: int,
             gpus_per_node: int, image: str, run_id: str) -> dict:
    """A pipeline task's run: local (kfp.local, paths) without a namespace; else a PyTorchJob there, whose pods
    read and write the artifacts' object-store URIs, named after the output so a retried task follows it."""
    if not namespace:
        return run(opts, nproc_per_node)
    name = "kubeclip-train-" + hashlib.sha256(out_uri.encode()).hexdigest()[:16]
    cluster = LaunchOptions(name=name, namespace=namespace, train_args=[], image=image or None, nodes=nodes,
                            nproc_per_node=nproc_per_node, gpus_per_node=gpus_per_node,
                            labels={RUN_LABEL: run_id} if run_id else {})
    return run(dataclasses.replace(opts, data=data_uri, out=out_uri), cluster=cluster)


def last_record(out: str) -> dict:
    with fsspec.open(f"{out.rstrip('/')}/metrics.jsonl", "r") as f:
        lines = f.read().splitlines()
    return json.loads(lines[-1]) if lines else {}
