"""Run training on Kubernetes as a Kubeflow PyTorchJob: patch the template in manifests/base/training/
with the run's arguments, create it through the Kubernetes API, follow it to the end, clean up."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).with_name("pytorchjob.yaml")  # manifests/base/training/kubeclip-train.yaml, linked
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
RUN_LABEL = "kubeclip.io/run"


@dataclass(kw_only=True)
class LaunchOptions:
    name: str  # the PyTorchJob's name, unique in the namespace
    namespace: str
    train_args: list[str]  # `kubeclip train` flags, e.g. ["--data=s3://...", "--out=s3://...", "--steps=1000"]
    image: str | None = None  # the training image; the template's by default
    nodes: int = 2  # pods: one Master and nodes - 1 Workers
    nproc_per_node: int = 1  # training processes per pod, one per GPU
    gpus_per_node: int = 1
    max_restarts: int = 3  # restarts of the whole run after a pod or process fails
    template: Path = TEMPLATE
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # on the job, e.g. the pipeline run that started it


def render_job(opts: LaunchOptions) -> dict:
    """The PyTorchJob for this run: the template with name, image, arguments and sizes patched in."""
    job = yaml.safe_load(opts.template.read_text())
    job["metadata"]["name"] = opts.name
    job["metadata"]["namespace"] = opts.namespace
    job["metadata"]["labels"].update(opts.labels)
    spec = job["spec"]
    spec["nprocPerNode"] = str(opts.nproc_per_node)
    spec["elasticPolicy"].update(minReplicas=opts.nodes, maxReplicas=opts.nodes, maxRestarts=opts.max_restarts)
    replicas = spec["pytorchReplicaSpecs"]
    pod = replicas["Master"]["template"]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "pytorch")
    # the template's flags (resume, metrics port) stay unless the run sets them itself
    given = {a.split("=", 1)[0] for a in opts.train_args if a.startswith("--")}
    container["args"] = [*opts.train_args, *(a for a in container["args"] if a.split("=", 1)[0] not in given
                                             and a.startswith(("--resume", "--metrics-port")))]
    if opts.image:
        container["image"] = opts.image
    for kind in ("requests", "limits"):
        if opts.gpus_per_node:
            container["resources"][kind]["nvidia.com/gpu"] = str(opts.gpus_per_node)
        else:
            container["resources"][kind].pop("nvidia.com/gpu", None)
    if opts.node_selector:
        pod["spec"]["nodeSelector"] = dict(opts.node_selector)
    if opts.tolerations:
        pod["spec"]["tolerations"] = list(opts.tolerations)
    replicas["Master"]["replicas"] = 1
    if opts.nodes > 1:
        replicas["Worker"] = {**replicas.get("Worker", {}), "replicas": opts.nodes - 1,
                              "template": copy.deepcopy(pod)}
    else:
        replicas.pop("Worker", None)
    return job


def outcome(job: dict) -> tuple[str, str] | None:
    """("Succeeded" | "Failed", message) once the job has finished, else None."""
    for condition in reversed(job.get("status", {}).get("conditions", [])):
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return condition["type"], condition.get("message") or condition.get("reason", "")
    return None


def delete_jobs(namespace: str, labels: dict[str, str]) -> list[str]:
    """Delete the PyTorchJobs carrying `labels` (a pipeline's exit handler cleans up after a failed run)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    jobs = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, label_selector=selector)["items"]
    for job in jobs:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job["metadata"]["name"])
    return [job["metadata"]["name"] for job in jobs]


def launch(opts: LaunchOptions, timeout: float = 7 * 24 * 3600, poll: float = 10.0, delete: bool = True) -> str:
    """Create the job, wait for it to finish, print the master's log; raise with the reason if it failed."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api, core = client.CustomObjectsApi(), client.CoreV1Api()
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, opts.namespace, PLURAL, render_job(opts))
    except client.ApiException as e:
        if e.status != 409:
            raise
        print(f"PyTorchJob {opts.namespace}/{opts.name} exists (a retried task): following it")
    try:
        deadline = time.time() + timeout
        while (result := outcome(api.get_namespaced_custom_object(GROUP, VERSION, opts.namespace, PLURAL,
                                                                  opts.name))) is None:
            if time.time() > deadline:
                raise TimeoutError(f"PyTorchJob {opts.namespace}/{opts.name} did not finish in {timeout:.0f} s")
            time.sleep(poll)
        status, message = result
        print(_master_log(core, opts))
        if status == "Failed":
            raise RuntimeError(f"PyTorchJob {opts.namespace}/{opts.name} failed: {message}")
        return message
    finally:
        if delete:
            api.delete_namespaced_custom_object(GROUP, VERSION, opts.namespace, PLURAL, opts.name)


def _master_log(core, opts: LaunchOptions) -> str:
    selector = f"training.kubeflow.org/job-name={opts.name},training.kubeflow.org/replica-type=master"
    pods = core.list_namespaced_pod(opts.namespace, label_selector=selector).items
    return "\n".join(core.read_namespaced_pod_log(p.metadata.name, opts.namespace, tail_lines=200) for p in pods)
