"""What a run on a cluster needs from the pipeline: every task sized, the GPU task on the right node, the storage
credentials by reference where a task reaches the store itself, artifact URIs that fsspec and KServe read, the
run submitted with an s3:// root and the ServiceAccount whose Role grants what the run does, and nothing more."""

import re

import pytest
import yaml
from kfp import dsl

from kubeclip.pipelines import PIPELINE_ROOT_ENV, SERVICE_ACCOUNT
from kubeclip.pipelines.kubeclip_pipeline import GPU, RESOURCES, STORAGE_ENDPOINT, STORAGE_SECRET
from kubeclip.pipelines.run import COMPILED, run_remote
from tests.conftest import ROOT

RBAC = ROOT / "manifests" / "base" / "rbac"


@pytest.fixture(scope="module")
def ir() -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(COMPILED.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_every_task_has_cpu_and_memory_requests_and_limits(ir):
    spec, _ = ir
    executors = spec["deploymentSpec"]["executors"]
    assert set(_components(spec).values()) == set(RESOURCES), "RESOURCES names exactly the pipeline's components"
    for name, executor in executors.items():
        resources = executor["container"].get("resources", {})
        for kind in ("Cpu", "Memory"):
            assert {f"resource{kind}Request", f"resource{kind}Limit"} <= resources.keys(), f"{name}: {kind}"
            request, limit = resources[f"{kind.lower()}Request"], resources[f"{kind.lower()}Limit"]
            assert 0 < request < limit, f"{name}: {kind} request {request}, limit {limit}"


def test_memory_requests_leave_half_again_the_measured_peak_and_limits_twice(ir):
    spec, _ = ir
    components = _components(spec)
    for name, executor in spec["deploymentSpec"]["executors"].items():
        peak = RESOURCES[components[name]][1] * 2**20
        resources = executor["container"]["resources"]
        assert 1.5 * peak <= resources["memoryRequest"] * 1e9 < 1.5 * peak + 64 * 2**20, name
        assert 2 * peak <= resources["memoryLimit"] * 1e9 < 2 * peak + 64 * 2**20, name


def _components(spec: dict) -> dict[str, str]:
    """Each executor's component by its name (the IR numbers a second use of one: package-2)."""
    return {c["executorLabel"]: re.sub(r"-\d+$", "", name.removeprefix("comp-"))
            for name, c in spec["components"].items() if "executorLabel" in c}


def test_the_tensorrt_task_names_its_gpu_and_the_node_that_has_it(ir):
    spec, kubernetes = ir
    accelerator = spec["deploymentSpec"]["executors"]["exec-export-tensorrt"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == GPU == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    selector = kubernetes["exec-export-tensorrt"]["nodeSelector"]["nodeSelectorJson"]
    assert selector == {"componentInputParameter": "pipelinechannel--gpu_node_selector"}
    assert spec["root"]["inputDefinitions"]["parameters"]["gpu_node_selector"]["defaultValue"] == {}
    executors = spec["deploymentSpec"]["executors"]
    assert [n for n, e in executors.items() if "accelerator" in e["container"]["resources"]] == ["exec-export-tensorrt"]


def test_only_the_task_that_reaches_the_store_itself_gets_its_credentials_by_reference(ir):
    _, kubernetes = ir
    with_secret = {name for name, settings in kubernetes.items() if "secretAsEnv" in settings}
    assert with_secret == {"exec-train"}  # its PyTorchJob's pods write s3://, and it reads metrics.jsonl back
    (secret,) = kubernetes["exec-train"]["secretAsEnv"]
    assert secret["secretName"] == STORAGE_SECRET and secret["optional"] is False
    assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == {
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")}
    (endpoint,) = kubernetes["exec-train"]["configMapAsEnv"]
    assert endpoint["configMapName"] == STORAGE_ENDPOINT and endpoint["optional"] is True  # AWS's S3 needs none
    assert endpoint["keyToEnv"] == [{"configMapKey": "AWS_ENDPOINT_URL", "envVar": "AWS_ENDPOINT_URL"}]


MINIO = "minio://mlpipeline/v2/artifacts/kubeclip/run-1"  # KFP's default root: no fsspec or KServe scheme


def test_the_training_pods_and_kserve_are_handed_s3_uris(monkeypatch):
    from kubeclip.components.deploy import step as deploy_step
    from kubeclip.components.deploy.component import deploy
    from kubeclip.components.train import run
    from kubeclip.components.train.component import train

    handed = {}
    monkeypatch.setattr(run, "run_task", lambda opts, data_uri, out_uri, *rest: handed.update(
        data=data_uri, out=out_uri) or {"step": 1, "loss": 1.0, "logit_scale": 1.0, "samples_per_second": 1.0})
    train.python_func(data=dsl.Dataset(uri=f"{MINIO}/merge/dataset"), checkpoint=dsl.Model(uri=f"{MINIO}/train/ckpt"),
                      metrics=dsl.Metrics(uri=f"{MINIO}/train/metrics"), namespace="kubeclip")
    monkeypatch.setattr(deploy_step, "deploy", lambda opts: handed.update(storage=opts.storage_uri) or {"action": "x"})
    deploy.python_func(repository=dsl.Model(uri=f"{MINIO}/package/repository", metadata={}), namespace="kubeclip")
    root = MINIO.replace("minio://", "s3://")
    assert handed == {"data": f"{root}/merge/dataset", "out": f"{root}/train/ckpt",
                      "storage": f"{root}/package/repository"}


class _Client:
    """kfp.Client's submission, recorded."""
    submitted = {}

    def __init__(self, host):
        self.submitted["host"] = host

    def create_run_from_pipeline_func(self, pipeline, **kwargs):
        self.submitted.update(kwargs)
        return type("Result", (), {"run_id": "run-1"})


def test_a_run_is_submitted_with_an_s3_root_as_the_pipeline_service_account(monkeypatch):
    import kfp

    monkeypatch.setattr(kfp, "Client", _Client)
    monkeypatch.setenv(PIPELINE_ROOT_ENV, "s3://kubeclip/pipeline")
    assert run_remote("http://kfp", {"steps": 10}) == "run-1"
    assert _Client.submitted == {"host": "http://kfp", "arguments": {"steps": 10}, "experiment_name": "kubeclip",
                                 "pipeline_root": "s3://kubeclip/pipeline", "service_account": "kubeclip-pipeline"}
    run_remote("http://kfp", {}, "s3://other/root", service_account="runner")
    assert _Client.submitted["pipeline_root"] == "s3://other/root" and _Client.submitted["service_account"] == "runner"
    monkeypatch.setenv(PIPELINE_ROOT_ENV, "")
    for root in ("minio://mlpipeline/v2/artifacts", "s3://", "gs://bucket/x", "", None):
        with pytest.raises(SystemExit, match="s3://bucket/prefix"):
            run_remote("http://kfp", {}, root)


def test_the_default_service_account_is_the_one_the_rbac_manifests_bind():
    account = yaml.safe_load((RBAC / "kubeclip-pipeline-serviceaccount.yaml").read_text())
    binding = yaml.safe_load((RBAC / "kubeclip-pipeline-rolebinding.yaml").read_text())
    assert account["metadata"]["name"] == SERVICE_ACCOUNT
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT}]


def test_the_role_lets_kfp_read_the_secret_the_tasks_use_and_says_why_for_every_rule():
    text = (RBAC / "kubeclip-pipeline-role.yaml").read_text()
    role = yaml.safe_load(text)
    secrets = [r for r in role["rules"] if r["resources"] == ["secrets"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [STORAGE_SECRET],
                        "verbs": ["get"]}]
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"  - apiGroups:", line)]
    assert len(starts) == len(role["rules"])
    for i in starts:
        assert lines[i - 1].strip().startswith("#"), f"rule at line {i + 1} has no comment giving its reason"
