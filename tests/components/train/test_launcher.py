"""The PyTorchJob: the template renders with kustomize and validates as is; the launcher's patched
job validates too and carries the run's arguments and sizes."""

import subprocess

import jsonschema
import pytest
import yaml

from kubeclip.components.train.launcher import LaunchOptions, outcome, render_job
from tests.conftest import ROOT, require, validate_custom_resource


def test_training_base_renders_and_validates():
    require(subprocess.run(["which", "kubectl"], capture_output=True).returncode == 0, "kubectl",
            "install kubectl >= 1.27 (it renders kustomize offline)")
    rendered = subprocess.run(["kubectl", "kustomize", str(ROOT / "manifests/base/training")], capture_output=True,
                              text=True, check=True).stdout
    objects = {o["kind"]: o for o in yaml.safe_load_all(rendered)}
    assert set(objects) == {"PyTorchJob", "ServiceAccount"}
    validate_custom_resource(objects["PyTorchJob"])
    pod = objects["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["containers"][0]["name"] == "pytorch" and pod["securityContext"]["runAsNonRoot"] is True


def test_launcher_patches_the_run_into_the_template():
    job = render_job(LaunchOptions(name="clip-run-7", namespace="ml", nodes=4, nproc_per_node=8, gpus_per_node=8,
                                   image="registry.example/kubeclip-train:1.2", train_args=["--data=s3://b/d",
                                   "--out=s3://b/r", "--steps=1000"], node_selector={"gpu": "h100"}))
    validate_custom_resource(job)
    assert job["metadata"] == {**job["metadata"], "name": "clip-run-7", "namespace": "ml"}
    spec = job["spec"]
    assert spec["nprocPerNode"] == "8" and spec["elasticPolicy"]["minReplicas"] == 4
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    for role in ("Master", "Worker"):
        pod = spec["pytorchReplicaSpecs"][role]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == "registry.example/kubeclip-train:1.2"
        assert container["args"] == ["--data=s3://b/d", "--out=s3://b/r", "--steps=1000", "--resume=latest",
                                     "--metrics-port=9090"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert pod["nodeSelector"] == {"gpu": "h100"}

    single = render_job(LaunchOptions(name="cpu-run", namespace="ml", nodes=1, gpus_per_node=0, train_args=[]))
    validate_custom_resource(single)
    assert "Worker" not in single["spec"]["pytorchReplicaSpecs"]
    assert "nvidia.com/gpu" not in single["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"][0]["resources"]["limits"]


def test_a_misspelt_field_fails_validation():
    job = render_job(LaunchOptions(name="x", namespace="ml", train_args=[]))
    job["spec"]["nProcPerNode"] = "2"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom_resource(job)


def test_outcome_reads_the_final_condition():
    assert outcome({"status": {"conditions": [{"type": "Running", "status": "True"}]}}) is None
    failed = {"status": {"conditions": [{"type": "Running", "status": "False"},
                                        {"type": "Failed", "status": "True", "message": "pod OOMKilled"}]}}
    assert outcome(failed) == ("Failed", "pod OOMKilled")
