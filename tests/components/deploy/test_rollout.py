"""Rollouts end to end: the real deploy() and the real kubernetes/kserve clients, configured from a kubeconfig, talk
to a stand-in of the Kubernetes API server that applies their merge patches by RFC 7386 (tests/components/deploy/
apiserver.py); the test plays KServe's controller through the status, and a real Prometheus judges the canary on
good or bad series (conftest.py). Each case checks the object left stored and the one line that says why."""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubeclip.components.deploy.step import (DeployOptions, RolloutFailed, deploy, owned, pinned, render,
                                             without_server_fields)
from kubeclip.components.lineage import write_lineage
from tests.components.deploy.apiserver import ApiServer
from tests.conftest import ROOT

OLD_URI, NEW_URI = "s3://kubeclip/models/clip/v1", "s3://kubeclip/models/clip/v2"
OLD_ID, NEW_ID = "0123456789ab", "7f3a7f3a7f3a"
HEALTHY, FAILING = "clip-transformer-00002", "clip-transformer-00005"  # conftest.REVISIONS: fine, server burst
UNDONE = {"rolled-back", "removed"}


def status(generation: int, transformer_revision: str, ready: bool = True) -> dict:
    """What KServe reports once it has observed `generation`."""
    return {"observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "components": {"predictor": {"latestCreatedRevision": f"clip-predictor-{generation:05d}"},
                           "transformer": {"latestCreatedRevision": transformer_revision}}}


def controller(transformer_revision: str, ready: Callable[[int], bool] = lambda generation: True):
    """An on_write hook: KServe observing each written generation at once, Ready or not."""
    def observe(isvc: dict) -> None:
        generation = isvc["metadata"]["generation"]
        isvc["status"] = status(generation, transformer_revision, ready(generation))
    return observe


def canaries(cluster: ApiServer) -> list[int | None]:
    """The predictor's canaryTrafficPercent in each object written, in order (the previous model's first)."""
    return [isvc["spec"]["predictor"].get("canaryTrafficPercent") for isvc in cluster.history]


@pytest.fixture
def cluster():
    with ApiServer() as server:
        yield server


@pytest.fixture
def new_model(tmp_path, cluster) -> DeployOptions:
    """The rollout of NEW_URI, with a lineage (annotations the previous model lacks), small waits."""
    write_lineage(str(tmp_path / "repo"), "triton-repo", {"export": {"url": "s3://x", "model_id": NEW_ID}}, {},
                  time.time())
    return DeployOptions(namespace="ml", storage_uri=NEW_URI, model_id=NEW_ID,
                         lineage=str(tmp_path / "repo" / "lineage.json"), timeout=1, poll_seconds=0.05,
                         analysis_seconds=0, window="20s", kubeconfig=str(cluster.kubeconfig(tmp_path / "kubeconfig")))


def previous(cluster: ApiServer, canary_percent: int | None = None) -> dict:
    """Store the model running before: Ready at generation 1, with an annotation of its own."""
    isvc = render(DeployOptions(namespace="ml", storage_uri=OLD_URI, model_id=OLD_ID, canary_percent=canary_percent))
    isvc["metadata"]["annotations"]["example.com/owner"] = "search"
    cluster.answer("POST", "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices", "", isvc)
    cluster.set_status("ml", "clip", status(1, "clip-transformer-00001"))
    return cluster.stored("ml", "clip")


def rollout(opts: DeployOptions, capsys) -> dict:
    """deploy()'s result, after checking it printed its summary and nothing else, and raised when it undid."""
    try:
        result, raised = deploy(opts), False
    except RolloutFailed as undone:
        result, raised = undone.result, True
    assert capsys.readouterr().out.splitlines() == [result["summary"]]
    assert raised == (result["action"] in UNDONE)
    return result


def rendered(opts: DeployOptions, current: dict | None = None) -> dict:
    """The object a rollout without canary of `opts` over `current` means to leave."""
    return render(dataclasses.replace(opts, canary_percent=None), current)


def test_a_first_rollout_creates_it_and_waits_for_its_generation(cluster, new_model, capsys):
    cluster.on_write = controller(HEALTHY)
    result = rollout(new_model, capsys)
    assert result["summary"] == f"deployed {NEW_URI} to 100%: ready at generation 1"
    assert without_server_fields(cluster.stored("ml", "clip")) == rendered(new_model)


def test_a_healthy_canary_is_promoted_and_takes_all_traffic(cluster, new_model, prometheus, capsys):
    before = previous(cluster)
    cluster.on_write = controller(HEALTHY)
    result = rollout(dataclasses.replace(new_model, canary_percent=10, prometheus_url=prometheus), capsys)
    assert result["summary"].startswith(f"promoted {NEW_URI} to 100%: canary healthy: ")
    assert result["summary"].endswith(f"(revision {HEALTHY})")
    final = cluster.stored("ml", "clip")
    assert without_server_fields(final) == rendered(new_model, before)  # no canaryTrafficPercent left anywhere
    assert canaries(cluster) == [None, 10, None]


def test_a_failing_canary_restores_the_previous_object_exactly(cluster, new_model, prometheus, capsys):
    before = previous(cluster)
    cluster.on_write = controller(FAILING)
    result = rollout(dataclasses.replace(new_model, canary_percent=10, prometheus_url=prometheus), capsys)
    assert result["summary"].startswith(f"rolled back ml/clip to {OLD_URI}: canary server error ratio ")
    assert result["summary"].endswith(f"(revision {FAILING})")
    final = cluster.stored("ml", "clip")
    # the lineage, git commit and canary keys the previous object lacked are gone; its own annotation stays
    assert without_server_fields(final) == without_server_fields(before)
    # the restored spec is pinned to the previous revision until it is Ready: never all traffic on the canary
    assert canaries(cluster) == [None, 10, 0, None]
    assert cluster.history[2]["spec"]["predictor"]["model"]["storageUri"] == OLD_URI


def test_a_first_rollout_whose_canary_fails_is_removed(cluster, new_model, prometheus, capsys):
    cluster.on_write = controller(FAILING)
    result = rollout(dataclasses.replace(new_model, canary_percent=10, prometheus_url=prometheus), capsys)
    assert result["summary"].startswith("removed ml/clip: its first rollout failed: canary server error ratio ")
    assert cluster.stored("ml", "clip") is None


def test_a_full_rollout_over_a_canary_left_behind_gives_the_new_model_all_traffic(cluster, new_model, capsys):
    before = previous(cluster, canary_percent=10)
    assert before["spec"]["predictor"]["canaryTrafficPercent"] == 10
    cluster.on_write = controller(HEALTHY)
    result = rollout(new_model, capsys)
    assert result["summary"] == f"deployed {NEW_URI} to 100%: ready at generation 2"
    final = cluster.stored("ml", "clip")
    assert without_server_fields(final) == rendered(new_model, before)
    assert "canaryTrafficPercent" not in final["spec"]["predictor"] | final["spec"]["transformer"]


@pytest.mark.parametrize("first", [False, True], ids=["over-a-previous-model", "first-rollout"])
def test_a_readiness_timeout_undoes_the_rollout(cluster, new_model, first, capsys):
    before = None if first else previous(cluster)
    new_generation = 1 if first else 2
    cluster.on_write = controller(HEALTHY, ready=lambda generation: generation != new_generation)  # it never starts
    result = rollout(new_model, capsys)
    if first:
        assert result["summary"] == "removed ml/clip: its first rollout failed: not ready within 1 s (generation 1)"
        assert cluster.stored("ml", "clip") is None
    else:
        assert result["summary"] == f"rolled back ml/clip to {OLD_URI}: not ready within 1 s (generation 2)"
        assert without_server_fields(cluster.stored("ml", "clip")) == without_server_fields(before)
        assert canaries(cluster) == [None, None, 0, None]


@pytest.mark.parametrize("observed_after", [None, 0.5], ids=["never-observed", "observed-later"])
def test_a_stale_ready_of_the_previous_generation_is_not_taken_for_the_new(cluster, new_model, observed_after,
                                                                          capsys):
    before = previous(cluster)  # Ready, at generation 1; the controller is slow to observe generation 2
    if observed_after:
        threading.Timer(observed_after, cluster.set_status, ("ml", "clip", status(2, HEALTHY))).start()
    started = time.monotonic()
    result = rollout(new_model, capsys)
    if observed_after:
        assert result["summary"] == f"deployed {NEW_URI} to 100%: ready at generation 2"
        assert time.monotonic() - started >= observed_after
        assert without_server_fields(cluster.stored("ml", "clip")) == rendered(new_model, before)
    else:  # the controller observes nothing more: the restored spec is not Ready either, and stays pinned
        assert result["summary"] == (f"rolled back ml/clip to {OLD_URI}: not ready within 1 s (generation 2); the "
                                     "restored revision was not ready within 1 s (generation 3), so all traffic "
                                     "stays pinned to the previous revision (canaryTrafficPercent 0)")
        assert owned(cluster.stored("ml", "clip")) == pinned(before)
        assert canaries(cluster) == [None, None, 0]


def test_the_command_reads_kubeconfig_says_what_it_did_and_fails_when_undone(cluster, tmp_path):
    before = previous(cluster)
    cluster.on_write = controller(HEALTHY, ready=lambda generation: generation != 2)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig(tmp_path / "kubeconfig"))}
    command = subprocess.run([sys.executable, "-m", "kubeclip.components.cli", "deploy", "--namespace", "ml",
                              "--storage-uri", NEW_URI, "--timeout", "1", "--poll-seconds", "0.05"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert command.returncode == 1, command.stderr
    summary, answer = command.stdout.splitlines()
    assert summary == f"rolled back ml/clip to {OLD_URI}: not ready within 1 s (generation 2)"
    assert json.loads(answer) == {"action": "rolled-back", "summary": summary, "storage_uri": OLD_URI,
                                  "reason": "not ready within 1 s (generation 2)"}
    assert without_server_fields(cluster.stored("ml", "clip")) == without_server_fields(before)


def test_the_stand_in_refuses_what_it_does_not_implement_and_stale_writes(cluster):
    """The stand-in's own checks: a rollout that sent another patch type or overwrote a newer object would fail."""
    previous(cluster)
    api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=cluster.url)))
    where = ("serving.kserve.io", "v1beta1", "ml", "inferenceservices", "clip")
    json_patch = urllib.request.Request(f"{cluster.url}/apis/serving.kserve.io/v1beta1/namespaces/ml/"
                                        "inferenceservices/clip", method="PATCH",
                                        data=b'[{"op": "remove", "path": "/spec/predictor/minReplicas"}]',
                                        headers={"Content-Type": "application/json-patch+json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(json_patch, timeout=10)
    assert refused.value.code == 415
    stale = cluster.stored("ml", "clip")
    api.patch_namespaced_custom_object(*where, {"metadata": {"labels": {"team": "search"}}})
    assert cluster.stored("ml", "clip")["metadata"]["generation"] == 1  # metadata only: the same generation
    with pytest.raises(ApiException) as conflict:
        api.replace_namespaced_custom_object(*where, stale)
    assert conflict.value.status == 409
    patched = api.patch_namespaced_custom_object(*where, {"spec": {"predictor": {"minReplicas": None}}})
    assert "minReplicas" not in patched["spec"]["predictor"] and patched["metadata"]["generation"] == 2
    assert patched["status"] == status(1, "clip-transformer-00001")  # writes to the object leave the status alone
