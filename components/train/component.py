"""KFP component of the train step: under kfp.local it trains with a local torchrun; on a cluster, with
`namespace` set, it runs a PyTorchJob that reads and writes the artifacts' object-store URIs."""

from kfp import dsl

from components.images import RUNTIME_IMAGE, TRAIN_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def train(data: dsl.Input[dsl.Dataset], checkpoint: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics],
          model: str = "tiny-vit", steps: int = 400, batch_size: int = 64, lr: float = 1e-3, warmup: int = 40,
          workers: int = 1, seed: int = 0, nproc_per_node: int = 1, namespace: str = "", nodes: int = 1,
          gpus_per_node: int = 0, image: str = TRAIN_IMAGE):
    """Contrastive pre-training; `checkpoint` receives the run folder (checkpoints/, metrics.jsonl)."""
    import hashlib

    from components.train.launcher import LaunchOptions
    from components.train.run import run
    from components.train.step import TrainOptions

    on_cluster = bool(namespace)
    opts = TrainOptions(data=data.uri if on_cluster else data.path, out=checkpoint.uri if on_cluster else checkpoint.path,
                        model=model, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, workers=workers,
                        seed=seed, resume="latest")
    # named after the output artifact: a retried task finds and follows the job it started
    job_name = "kubeclip-train-" + hashlib.sha256(checkpoint.uri.encode()).hexdigest()[:16]
    cluster = LaunchOptions(name=job_name, namespace=namespace,
                            train_args=[], image=image, nodes=nodes, nproc_per_node=nproc_per_node,
                            gpus_per_node=gpus_per_node) if on_cluster else None
    record = run(opts, nproc_per_node=1 if on_cluster else nproc_per_node, cluster=cluster)
    for key in ("loss", "logit_scale", "samples_per_second"):
        metrics.log_metric(f"train_{key}", record[key])
    checkpoint.metadata.update(step=record["step"], model=model)
