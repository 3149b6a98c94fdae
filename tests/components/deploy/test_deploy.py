"""Deploy: the dry run prints a valid InferenceService; promote and roll-back decisions are made on
what a real Prometheus server reports about the canary's series: client mistakes never roll it back."""

import ast
import json
import subprocess
import sys
import time

import pytest
import yaml

from kubeclip.components.deploy.canary import SERVER_ERRORS, canary_health, verdict
from kubeclip.components.deploy.step import DeployOptions, render
from kubeclip.components.lineage import write_lineage
from tests.conftest import ROOT, validate_custom_resource
from tests.prometheus import instant


def test_dry_run_prints_a_valid_inference_service():
    result = subprocess.run([sys.executable, "-m", "kubeclip.components.cli", "deploy", "--namespace", "ml",
                             "--storage-uri", "s3://models/clip/7f3a9c2e1b4d", "--model-id", "7f3a9c2e1b4d",
                             "--canary-percent", "10", "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    isvc = yaml.safe_load(result.stdout)
    validate_custom_resource(isvc)
    assert isvc["metadata"]["name"] == "clip" and isvc["metadata"]["namespace"] == "ml"
    assert isvc["metadata"]["annotations"]["kubeclip.io/model-id"] == "7f3a9c2e1b4d"
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == "s3://models/clip/7f3a9c2e1b4d"
    assert predictor["canaryTrafficPercent"] == 10
    transformer = isvc["spec"]["transformer"]  # the canary's metrics are its transformer's: it splits too
    assert transformer["canaryTrafficPercent"] == 10
    assert transformer["annotations"]["kubeclip.io/storage-uri"] == predictor["model"]["storageUri"]


def test_annotations_carry_the_repository_lineage_and_replace_the_previous_model_s(tmp_path):
    write_lineage(str(tmp_path / "export"), "export",
                  {"checkpoint": {"url": str(tmp_path / "train"), "sha256": "7f3a" * 16}}, {}, time.time())
    write_lineage(str(tmp_path / "repo"), "triton-repo",
                  {"export": {"url": str(tmp_path / "export"), "model_id": "7f3a7f3a7f3a"}}, {}, time.time())
    result = subprocess.run([sys.executable, "-m", "kubeclip.components.cli", "deploy", "--namespace", "ml",
                             "--storage-uri", "s3://models/clip/7f3a7f3a7f3a", "--model-id", "7f3a7f3a7f3a",
                             "--lineage", str(tmp_path / "repo" / "lineage.json"), "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    isvc = yaml.safe_load(result.stdout)
    validate_custom_resource(isvc)
    annotations = isvc["metadata"]["annotations"]
    steps = json.loads(annotations["kubeclip.io/lineage"])
    assert [s["step"] for s in steps] == ["triton-repo", "export"]
    assert steps[1]["inputs"]["checkpoint"]["sha256"] == "7f3a" * 16
    assert annotations["kubeclip.io/git-commit"] == steps[0]["git_commit"] is not None  # the tests run in a checkout

    opts = DeployOptions(namespace="ml", storage_uri="s3://models/clip/other", model_id="0123456789ab")
    assert render(opts, isvc)["metadata"]["annotations"] == {"kubeclip.io/model-id": "0123456789ab"}  # none stale
    with pytest.raises(SystemExit, match="packages model 7f3a7f3a7f3a"):
        render(DeployOptions(namespace="ml", storage_uri="s3://x", model_id="0123456789ab",
                             lineage=str(tmp_path / "repo" / "lineage.json")))


SERVING_RULES = ROOT / "manifests" / "base" / "monitoring" / "serving" / "kubeclip-serving.yaml"


OPTIONS = DeployOptions(namespace="ml", storage_uri="s3://m", canary_percent=10, window="20s")


@pytest.mark.parametrize("revision", ["clip-transformer-00002", "clip-transformer-00003", "clip-transformer-00004"])
def test_a_healthy_canary_is_promoted_whatever_its_clients_send(prometheus, revision):
    health = canary_health(prometheus, "ml", revision, "20s")
    promote, reason = verdict(health, OPTIONS)
    assert promote, reason
    assert "canary healthy" in reason
    assert health.error_ratio == 0 and 40 < health.p99_ms < 50  # the (25, 50] ms bucket
    if revision == "clip-transformer-00003":  # the flood counts as traffic: 960 answers a second against 540
        healthy = canary_health(prometheus, "ml", "clip-transformer-00002", "20s")
        assert health.requests / healthy.requests == pytest.approx(960 / 540, rel=0.15)  # a scrape apart at most
        failed = f'sum(increase(nv_inference_request_failure{{revision="{revision}"}}[20s]))'
        assert instant(prometheus, failed) > 0  # and Triton counted it as failures


@pytest.mark.parametrize("revision,why", [("clip-transformer-00005", "server error ratio"),
                                          ("clip-transformer-00006", "p99 latency"),
                                          ("clip-transformer-00007", "none of the"),
                                          ("clip-transformer-00009", "no requests")])
def test_a_bad_canary_is_rolled_back_with_the_reason(prometheus, revision, why):
    health = canary_health(prometheus, "ml", revision, "20s")
    promote, reason = verdict(health, OPTIONS)
    assert not promote and why in reason, reason
    if why == "server error ratio":
        assert health.error_ratio == pytest.approx(60 / 600, abs=0.01)


def test_the_error_alert_and_the_canary_count_the_same_server_errors():
    rules = yaml.safe_load(SERVING_RULES.read_text())["spec"]["groups"][0]["rules"]
    alert = next(rule for rule in rules if rule.get("alert") == "KubeclipServingErrorRatioHigh")
    assert f"kubeclip_transformer_requests_total{{{SERVER_ERRORS}}}" in alert["expr"]


def test_deploy_never_imports_kserve():
    """The rollout runs in the tests' own process, beside tritonclient.grpc, which registers the same protobuf
    symbols as kserve: the two cannot share a process, so deploy talks to the API with the kubernetes client."""
    for source in (ROOT / "components" / "deploy").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(name.split(".")[0] == "kserve" for name in names), f"{source.name} imports kserve"
