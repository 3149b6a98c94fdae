"""KFP component of the train step: under kfp.local it trains with a local torchrun; on a cluster, with
`namespace` set, it runs a PyTorchJob that reads and writes the artifacts' object-store URIs."""

from kfp import dsl

from kubeclip.components.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def train(data: dsl.Input[dsl.Dataset], checkpoint: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics],
          model: str = "tiny-vit", steps: int = 400, batch_size: int = 64, lr: float = 1e-3, warmup: int = 40,
          workers: int = 1, seed: int = 0, nproc_per_node: int = 1, namespace: str = "", nodes: int = 1,
          gpus_per_node: int = 0, image: str = "", run_id: str = "", text_tower: str = "",
          text_pooling: str = "mean", lock_text: bool = False, lock_image: bool = False, unlock_last: int = 0,
          image_tower_from: str = "", time_budget: str = ""):
    """Contrastive pre-training; `checkpoint` receives the run folder (checkpoints/, metrics.jsonl). On a
    cluster: `nodes` pods of the training image (`image`, default the PyTorchJob template's). The issue-9
    flags pass through as `kubeclip train` takes them (empty strings: not set); `text_tower` (hf:PATH) and
    `image_tower_from` name paths or URLs the training pods can read."""
    from kubeclip.components.lineage import lineage_metadata
    from kubeclip.components.storage import storage_uri
    from kubeclip.components.train.run import run_task
    from kubeclip.components.train.step import TrainOptions

    opts = TrainOptions(data=data.path, out=checkpoint.path, model=model, steps=steps, batch_size=batch_size, lr=lr,
                        warmup=warmup, workers=workers, seed=seed, resume="latest", text_tower=text_tower or None,
                        text_pooling=text_pooling, lock_text=lock_text, lock_image=lock_image, unlock_last=unlock_last,
                        image_tower_from=image_tower_from or None, time_budget=time_budget or None)
    # the PyTorchJob's pods read and write the artifacts' URIs themselves, as fsspec URLs
    record = run_task(opts, storage_uri(data.uri), storage_uri(checkpoint.uri), nproc_per_node, namespace, nodes,
                      gpus_per_node, image, run_id)
    for key in ("loss", "logit_scale", "samples_per_second"):
        metrics.log_metric(f"train_{key}", record[key])
    checkpoint.metadata.update(step=record["step"], model=model, **lineage_metadata(checkpoint.path))


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def train_cleanup(namespace: str = "", run_id: str = ""):
    """The exit handler's task: delete this run's PyTorchJobs that are left (after a failure or a cancel)."""
    from kubeclip.components.train.launcher import RUN_LABEL, delete_jobs

    if namespace and run_id:
        print("deleted:", delete_jobs(namespace, {RUN_LABEL: run_id}))
