"""kubeclip's trainer as a TorchX component, for schedulers TorchX reaches (local, Kubernetes with Volcano, ...).

    torchx run -s local_cwd components/train/torchx_app.py:train --nnodes 1 --nproc_per_node 2 \\
        -- --data runs/data --out runs/train --steps 100
    torchx run -s kubernetes -cfg queue=default components/train/torchx_app.py:train --nnodes 2 --gpu 8 -- ...
"""

from torchx import specs
from torchx.components import dist

from kubeclip.components.images import TRAIN_IMAGE


def train(*trainer_args: str, nnodes: int = 1, nproc_per_node: int = 1, image: str = TRAIN_IMAGE, cpu: int = 8,
          gpu: int = 0, memMB: int = 32768, max_retries: int = 0) -> specs.AppDef:
    """torchrun of `python -m kubeclip.components.train` on nnodes x nproc_per_node processes.

    Args:
        trainer_args: `kubeclip train` flags (--data, --out, --steps, ...); --resume latest is added
        nnodes: nodes (pods) taking part
        nproc_per_node: training processes per node, one per GPU
        image: the training image (ignored by local_cwd, which runs this checkout)
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        max_retries: restarts of the whole run after a failure; each resumes from the last checkpoint
    """
    args = list(trainer_args) if any(a.startswith("--resume") for a in trainer_args) else [*trainer_args,
                                                                                          "--resume", "latest"]
    return dist.torchrun(*args, m="kubeclip.components.train", image=image, name="kubeclip-train",
                         j=f"{nnodes}x{nproc_per_node}",
                    cpu=cpu, gpu=gpu, memMB=memMB, max_retries=max_retries)
