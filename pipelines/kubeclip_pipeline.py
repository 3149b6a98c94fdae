"""The Kubeflow pipeline: prepare (fanned out over partitions) -> merge -> train -> benchmark -> gate ->
export [-> TensorRT engines on a GPU node -> their parity check] -> package -> deploy, with the same step
functions `dvc repro` runs.

Under `kfp.local` every task runs here (training under a local torchrun); on a cluster, with
`train_namespace` set, training is a PyTorchJob, and the exit handler deletes what a failed or
cancelled run leaves of it. Image tags are the components' (components/images.py), not the git commit,
so the compiled IR changes only when the pipeline does.
"""

import math

from kfp import dsl, kubernetes

from kubeclip.components.benchmark.component import benchmark_classification, gate
from kubeclip.components.deploy.component import deploy
from kubeclip.components.export.component import export, export_tensorrt, export_tensorrt_check, package
from kubeclip.components.images import RUNTIME_IMAGE
from kubeclip.components.prepare.component import prepare_merge, prepare_synthetic
from kubeclip.components.train.component import train, train_cleanup

STORAGE_SECRET = "kubeclip-storage"  # object-store credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), by reference
# AWS_ENDPOINT_URL of an S3-compatible store (MinIO, Ceph): not a secret, so a ConfigMap; AWS's own S3 needs none
STORAGE_ENDPOINT = "kubeclip-storage"
GPU = "nvidia.com/gpu"  # the NVIDIA device plugin's resource name

# Each task's CPU and memory, by component: the memory request about 1.5x and the limit 2x the step's peak on the
# demo data (rounded up to 64 MiB), the CPU limit twice the cores the step keeps busy (process pools and torch threads
# take every core they get: 2 where measured). Peaks in MiB, measured one step at a time on params.yaml's values with
# dvc.yaml's commands, or the pipeline's values where they differ (2 prepare partitions; train's batch of 64 in one
# process with one loader worker): the process tree's unique memory plus its largest shared part once (what the
# pod's cgroup is charged), sampled every 50 ms; a light task's component function run with kfp imported, under
# /usr/bin/time -v. The KFP launcher in the same container adds a few tens of MiB.
# Constants that `kubeclip pipeline compile` writes into the IR, not pipeline parameters: KFP 2.17 compiles a
# parameter passed to set_memory_limit and the like only for a task at the pipeline's top level; inside an
# ExitHandler, If or ParallelFor (every task here) the sub-DAG never declares it, and the task cannot resolve it.
RESOURCES = {  # component: (cores, peak MiB)
    "prepare-partitions": (0.25, 85),
    "prepare-synthetic": (2, 1044),  # one image worker per core; the whole 10,000 in one partition: 1,043
    "prepare-merge": (1, 1015),  # copies shards one by one
    "train": (2, 1601),  # training in the task (no train_namespace); with a PyTorchJob the task only follows it
    "benchmark-classification": (2, 1266),
    "gate": (0.25, 85),
    "export": (2, 1334),
    "export-tensorrt": (1, 2048),  # NOT measured (no GPU or TensorRT here): an estimate of trtexec's host memory
    "export-tensorrt-check": (1, 954),  # trtexec's outputs stood in for by ONNX Runtime's
    "package": (1, 1016),  # the gpu flavor (the cpu flavor: 903)
    "deploy": (0.25, 175),  # a rollout imports kserve's client (a dry run: 85)
    "train-cleanup": (0.25, 84),
}


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def prepare_partitions(count: int) -> list:
    """["0/N", ..., "N-1/N"]: one prepare task per partition."""
    return [f"{index}/{count}" for index in range(count)]


def _sized(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """The task's CPU and memory requests and limits from RESOURCES."""
    cores, peak_mib = RESOURCES[task.component_spec.name]
    return (task.set_cpu_request(f"{cores * 1000:.0f}m").set_cpu_limit(f"{cores * 2000:.0f}m")
            .set_memory_request(_mebibytes(peak_mib * 1.5)).set_memory_limit(_mebibytes(peak_mib * 2)))


def _mebibytes(amount: float) -> str:
    return f"{math.ceil(amount / 64) * 64}Mi"


def _with_storage(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Credentials and endpoint for the object-store URLs a step reads or writes itself; the artifacts a task takes
    and gives are the KFP launcher's to move (with the store that the kfp-launcher ConfigMap configures)."""
    kubernetes.use_secret_as_env(task, STORAGE_SECRET, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                                        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    return kubernetes.use_config_map_as_env(task, STORAGE_ENDPOINT, {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"},
                                            optional=True)


def _on_gpu(task: dsl.PipelineTask, node_selector) -> dsl.PipelineTask:
    """One NVIDIA GPU on a node that `node_selector` picks, and the toleration GPU nodes' taint usually asks for."""
    task.set_accelerator_type(GPU).set_accelerator_limit(1)
    kubernetes.add_node_selector_json(task, node_selector)
    return kubernetes.add_toleration(task, key=GPU, operator="Exists", effect="NoSchedule")


def _package_and_deploy(exported, flavor, precision, namespace, canary_percent, prometheus_url, dry_run) -> None:
    repository = _sized(package(exported=exported, flavor=flavor, precision=precision))
    released = _sized(deploy(repository=repository.outputs["repository"], namespace=namespace,
                             canary_percent=canary_percent, prometheus_url=prometheus_url, dry_run=dry_run))
    released.set_caching_options(False)  # a rollout acts on the cluster: never served from the cache


@dsl.pipeline(name="kubeclip", description="Image-text pairs to a benchmarked, exported, served CLIP.")
def kubeclip_pipeline(samples: int = 10000, seed: int = 0, image_size: int = 64, partitions: int = 2,
                      eval_samples_per_class: int = 50, model: str = "tiny-vit", steps: int = 400,
                      batch_size: int = 64, lr: float = 1e-3, warmup: int = 40, nproc_per_node: int = 1,
                      train_namespace: str = "", train_nodes: int = 1, gpus_per_node: int = 0,
                      minimums: list = ["zeroshot.top1=0.375"], fp16: bool = True, int8: bool = False,
                      flavor: str = "gpu", precision: str = "fp32", tensorrt: bool = False,
                      gpu_node_selector: dict = {}, deploy_namespace: str = "kubeclip", canary_percent: int = 0,
                      prometheus_url: str = "", deploy_dry_run: bool = True):
    """Args:
        gpu_node_selector: the labels of the node that builds the TensorRT engines, e.g. {"nvidia.com/gpu.product":
            "NVIDIA-L4"}: a plan runs only on the GPU architecture that built it, so name the serving nodes' GPU.
    """
    cleanup = _sized(train_cleanup(namespace=train_namespace, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER))
    with dsl.ExitHandler(cleanup, name="kubeclip-run"):
        split = _sized(prepare_partitions(count=partitions))
        with dsl.ParallelFor(split.output, name="prepare-fan-out") as partition:
            part = _sized(prepare_synthetic(samples=samples, seed=seed, image_size=image_size,
                                            eval_samples_per_class=eval_samples_per_class, partition=partition))
            part.set_retry(2)
        data = _sized(prepare_merge(parts=dsl.Collected(part.outputs["dataset"])))

        # the task reads the run's metrics.jsonl back from the store, and its PyTorchJob's pods read and write there
        trained = _with_storage(_sized(train(
            data=data.outputs["dataset"], model=model, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
            seed=seed, nproc_per_node=nproc_per_node, namespace=train_namespace, nodes=train_nodes,
            gpus_per_node=gpus_per_node, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)))
        trained.set_retry(1)  # a retry follows the PyTorchJob it started, or resumes from its checkpoint

        scored = _sized(benchmark_classification(checkpoint=trained.outputs["checkpoint"],
                                                 dataset=data.outputs["dataset"], subset="eval/compositions",
                                                 linear_probe=True))
        verdict = _sized(gate(candidate=scored.outputs["results"], minimums=minimums))
        with dsl.If(verdict.output == True, name="gate-passed"):  # noqa: E712 (a KFP condition, not Python)
            exported = _sized(export(checkpoint=trained.outputs["checkpoint"], fp16=fp16, int8=int8,
                                     tensorrt=tensorrt))
            # kfp.local cannot merge branch outputs (dsl.OneOf), so each branch packages and deploys its own.
            with dsl.If(tensorrt == False, name="onnx-encoders"):  # noqa: E712
                _package_and_deploy(exported.outputs["exported"], flavor, precision, deploy_namespace, canary_percent,
                                    prometheus_url, deploy_dry_run)
            with dsl.Else(name="tensorrt-engines"):
                engines = _on_gpu(_sized(export_tensorrt(exported=exported.outputs["exported"])), gpu_node_selector)
                checked = _sized(export_tensorrt_check(engines=engines.outputs["engines"]))
                _package_and_deploy(checked.outputs["checked"], flavor, precision, deploy_namespace, canary_percent,
                                    prometheus_url, deploy_dry_run)
    cleanup.set_caching_options(False)
