"""The Kubeflow pipeline: prepare (fanned out over partitions) -> merge -> train -> benchmark -> gate ->
export [-> TensorRT engines on a GPU node -> their parity check] -> package -> deploy, with the same step
functions `dvc repro` runs.

Under `kfp.local` every task runs here (training under a local torchrun); on a cluster, with
`train_namespace` set, training is a PyTorchJob, and the exit handler deletes what a failed or
cancelled run leaves of it. Image tags are the components' (components/images.py), not the git commit,
so the compiled IR changes only when the pipeline does.
"""

from kfp import dsl, kubernetes

from kubeclip.components.benchmark.component import benchmark_classification, gate
from kubeclip.components.deploy.component import deploy
from kubeclip.components.export.component import export, export_tensorrt, export_tensorrt_check, package
from kubeclip.components.images import RUNTIME_IMAGE
from kubeclip.components.prepare.component import prepare_merge, prepare_synthetic
from kubeclip.components.train.component import train, train_cleanup

STORAGE_SECRET = "kubeclip-storage"  # object-store credentials, by reference only


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def prepare_partitions(count: int) -> list:
    """["0/N", ..., "N-1/N"]: one prepare task per partition."""
    return [f"{index}/{count}" for index in range(count)]


def _with_storage(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Credentials for fsspec URLs the step reads or writes itself (the artifacts are KFP's to move)."""
    return kubernetes.use_secret_as_env(task, STORAGE_SECRET, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                                               "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
                                        optional=True)


def _on_gpu(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """One NVIDIA GPU, and the toleration GPU nodes' taint usually asks for."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    return kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")


def _package_and_deploy(exported, flavor, precision, namespace, canary_percent, prometheus_url, dry_run) -> None:
    repository = package(exported=exported, flavor=flavor, precision=precision)
    released = _with_storage(deploy(repository=repository.outputs["repository"], namespace=namespace,
                                    canary_percent=canary_percent, prometheus_url=prometheus_url, dry_run=dry_run))
    released.set_caching_options(False)  # a rollout acts on the cluster: never served from the cache


@dsl.pipeline(name="kubeclip", description="Image-text pairs to a benchmarked, exported, served CLIP.")
def kubeclip_pipeline(samples: int = 10000, seed: int = 0, image_size: int = 64, partitions: int = 2,
                      eval_samples_per_class: int = 50, model: str = "tiny-vit", steps: int = 400,
                      batch_size: int = 64, lr: float = 1e-3, warmup: int = 40, nproc_per_node: int = 1,
                      train_namespace: str = "", train_nodes: int = 1, gpus_per_node: int = 0,
                      minimums: list = ["zeroshot.top1=0.375"], fp16: bool = True, int8: bool = False,
                      flavor: str = "gpu", precision: str = "fp32", tensorrt: bool = False,
                      deploy_namespace: str = "kubeclip", canary_percent: int = 0, prometheus_url: str = "",
                      deploy_dry_run: bool = True):
    cleanup = train_cleanup(namespace=train_namespace, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    with dsl.ExitHandler(cleanup, name="kubeclip-run"):
        split = prepare_partitions(count=partitions)
        with dsl.ParallelFor(split.output, name="prepare-fan-out") as partition:
            part = _with_storage(prepare_synthetic(samples=samples, seed=seed, image_size=image_size,
                                                   eval_samples_per_class=eval_samples_per_class,
                                                   partition=partition))
            part.set_retry(2)
        data = prepare_merge(parts=dsl.Collected(part.outputs["dataset"]))

        trained = train(data=data.outputs["dataset"], model=model, steps=steps, batch_size=batch_size, lr=lr,
                        warmup=warmup, seed=seed, nproc_per_node=nproc_per_node, namespace=train_namespace,
                        nodes=train_nodes, gpus_per_node=gpus_per_node, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        trained.set_retry(1)  # a retry follows the PyTorchJob it started, or resumes from its checkpoint

        scored = benchmark_classification(checkpoint=trained.outputs["checkpoint"], dataset=data.outputs["dataset"],
                                          subset="eval/compositions", linear_probe=True)
        verdict = gate(candidate=scored.outputs["results"], minimums=minimums)
        with dsl.If(verdict.output == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
            exported = export(checkpoint=trained.outputs["checkpoint"], fp16=fp16, int8=int8, tensorrt=tensorrt)
            # kfp.local cannot merge branch outputs (dsl.OneOf), so each branch packages and deploys its own.
            with dsl.If(tensorrt == False, name="onnx-encoders"):  # noqa: E712
                _package_and_deploy(exported.outputs["exported"], flavor, precision, deploy_namespace, canary_percent,
                                    prometheus_url, deploy_dry_run)
            with dsl.Else(name="tensorrt-engines"):
                engines = _on_gpu(export_tensorrt(exported=exported.outputs["exported"]))
                checked = export_tensorrt_check(engines=engines.outputs["engines"])
                _package_and_deploy(checked.outputs["checked"], flavor, precision, deploy_namespace, canary_percent,
                                    prometheus_url, deploy_dry_run)
    cleanup.set_caching_options(False)
