"""The deploy step: roll a Triton repository out as the `clip` InferenceService, safely.

Create or patch the InferenceService (storageUri, and the model id and lineage as annotations), wait until it is
Ready for the generation the write produced; with a canary, watch the new transformer revision's server-error ratio
and p99 latency in Prometheus, then promote it to all traffic or undo the rollout with the reason. A readiness timeout
undoes it too. Undo restores the previous spec and annotations exactly, or deletes the InferenceService that a failed
first rollout created. Every write is a JSON merge patch (RFC 7386, what the Kubernetes client sends for custom
objects), so what is to be removed is sent as null: see merge_patch. After the first rollout this step owns
`storageUri` and the `kubeclip.io/model-id` annotation (its patches carry the field manager
`kubeclip-deploy`); re-applying an overlay with `kubectl apply --server-side` then reports a
conflict on those fields instead of silently rolling back to the overlay's default model.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import fsspec
import yaml

from kubeclip.components.deploy.canary import canary_health, verdict
from kubeclip.components.lineage import chain
from kubeclip.components.options import option

TEMPLATE = Path(__file__).with_name("inferenceservice.yaml")  # manifests/base/serving/clip.yaml, linked
MODEL_ID_ANNOTATION = "kubeclip.io/model-id"
LINEAGE_ANNOTATION = "kubeclip.io/lineage"  # one JSON entry per step back to the data (components/lineage.chain)
GIT_COMMIT_ANNOTATION = "kubeclip.io/git-commit"  # the commit that packaged the repository
# On the transformer's pods: each model rolled out makes a new transformer revision, whose metrics are its canary's
STORAGE_URI_ANNOTATION = "kubeclip.io/storage-uri"
FIELD_MANAGER = "kubeclip-deploy"
RESOURCE = ("serving.kserve.io", "v1beta1")
PLURAL = "inferenceservices"
CANARY_COMPONENTS = ("predictor", "transformer")  # KServe splits each component's traffic on its own



@dataclass(kw_only=True)
class DeployOptions:
    name: str = option("clip", "the InferenceService's name")
    namespace: str = option(help="the namespace it lives in")
    storage_uri: str = option(help="the Triton repository to serve (s3://..., gs://..., pvc://...)")
    model_id: str | None = option(None, "recorded as the kubeclip.io/model-id annotation (the Triton "
                                        "repository's kubeclip_model_id)")
    lineage: str | None = option(None, "the repository's lineage.json (path or URL): recorded as the "
                                       "kubeclip.io/lineage and kubeclip.io/git-commit annotations")
    canary_percent: int | None = option(None, "send this share of traffic to the new model first, watch it, then "
                                               "promote or roll back (KServe Serverless mode)")
    prometheus_url: str | None = option(None, "Prometheus to read the canary's error ratio and p99 latency from")
    max_error_ratio: float = option(0.01, "roll back above this share of requests failed by a server error")
    max_p99_ms: float = option(500.0, "roll back above this p99 latency (ms)")
    analysis_seconds: float = option(300.0, "how long to watch the canary")
    window: str = option("5m", "Prometheus range over which the canary's figures are computed")
    timeout: float = option(600.0, "seconds to wait for the InferenceService to become Ready; past them the "
                                   "rollout is undone")
    poll_seconds: float = option(10.0, "how often to read the InferenceService's status while waiting")
    kubeconfig: str | None = option(None, "kubeconfig file (default: $KUBECONFIG or ~/.kube/config; inside a "
                                          "cluster, the pod's service account)")
    dry_run: bool = option(False, "print the InferenceService this would apply, and change nothing")


def without_server_fields(isvc: dict) -> dict:
    """An InferenceService without the fields the API server owns."""
    isvc = copy.deepcopy(isvc)
    isvc.pop("status", None)
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        isvc["metadata"].pop(key, None)
    return isvc


def render(opts: DeployOptions, current: dict | None = None) -> dict:
    """The InferenceService to apply: the running one (or the template) with this model's storage and id."""
    isvc = without_server_fields(current) if current else yaml.safe_load(TEMPLATE.read_text())
    isvc["metadata"].update(name=opts.name, namespace=opts.namespace)
    # the annotations describe the model rolled out now: what this rollout does not know is dropped, not left stale
    known = isvc["metadata"].setdefault("annotations", {})
    for key in (MODEL_ID_ANNOTATION, LINEAGE_ANNOTATION, GIT_COMMIT_ANNOTATION):
        known.pop(key, None)
    known.update(annotations(opts))
    spec = isvc["spec"]
    spec["predictor"]["model"]["storageUri"] = opts.storage_uri
    if "transformer" in spec:
        spec["transformer"].setdefault("annotations", {})[STORAGE_URI_ANNOTATION] = opts.storage_uri
    set_canary(spec, opts.canary_percent)
    return isvc


def set_canary(spec: dict, percent: int | None) -> None:
    """canaryTrafficPercent on the predictor and the transformer, or on neither. KServe splits each component's
    traffic on its own, and the canary is judged on the transformer's metrics, so the transformer must split too."""
    if percent is not None and not 0 < percent < 100:
        raise SystemExit(f"--canary-percent must be between 1 and 99, got {percent}")
    if percent is not None and "transformer" not in spec:
        raise SystemExit("--canary-percent judges the transformer's metrics, and this InferenceService has none")
    for component in CANARY_COMPONENTS:
        if component not in spec:
            continue
        if percent is None:
            spec[component].pop("canaryTrafficPercent", None)
        else:
            spec[component]["canaryTrafficPercent"] = percent


def annotations(opts: DeployOptions) -> dict[str, str]:
    """The model id, and the repository's lineage with its commit; a lineage naming another model is refused."""
    found = {MODEL_ID_ANNOTATION: opts.model_id} if opts.model_id else {}
    if opts.lineage:
        with fsspec.open(opts.lineage, "r") as f:
            record = json.load(f)
        packaged = record.get("inputs", {}).get("export", {}).get("model_id")
        if opts.model_id and packaged and packaged != opts.model_id:
            raise SystemExit(f"{opts.lineage} packages model {packaged}, not --model-id {opts.model_id}")
        found[LINEAGE_ANNOTATION] = json.dumps(chain(record), separators=(",", ":"), default=str)
        if record.get("git_commit"):
            found[GIT_COMMIT_ANNOTATION] = record["git_commit"]
    return found


def deploy(opts: DeployOptions) -> dict:
    """Apply, wait for the generation applied, and (with a canary) watch it, then promote or undo.

    Every path but the dry run prints one line saying what was done and why, also returned as "summary"; an undone
    rollout (rolled back, or removed after a failed first rollout) raises RolloutFailed, which carries the result.
    """
    if opts.dry_run:
        isvc = render(opts)
        print(yaml.safe_dump(isvc, sort_keys=False))
        return {"action": "dry-run", "inferenceservice": isvc}
    if opts.canary_percent is not None and not opts.prometheus_url:
        raise SystemExit("--canary-percent needs --prometheus-url to judge the canary")
    api = _api(opts)
    current = _get(api, opts)
    generation = _apply(api, opts, current, render(opts, current))["metadata"]["generation"]
    ready = _wait_ready(api, opts, generation)
    if ready is None:
        _undo(api, opts, current, f"not ready within {opts.timeout:g} s (generation {generation})")
    if opts.canary_percent is None:
        return _report("deployed", f"deployed {opts.storage_uri} to 100%: ready at generation {generation}",
                       opts.storage_uri)
    promote, reason = _judge(ready, opts)
    if not promote:
        _undo(api, opts, current, reason)
    _patch(api, opts, promotion(ready))
    return _report("promoted", f"promoted {opts.storage_uri} to 100%: {reason}", opts.storage_uri, reason)


class RolloutFailed(SystemExit):
    """A rollout undone. As a SystemExit it fails `kubeclip deploy` and the KFP task with the summary, as a bad
    model must; `result` is the dict that deploy() returns on the other paths."""

    def __init__(self, result: dict):
        super().__init__(result["summary"])
        self.result = result


def merge_patch(source: dict, target: dict) -> dict:
    """The RFC 7386 merge patch that turns `source` into `target`. The Kubernetes client sends every patch of a
    custom object as application/merge-patch+json, where a key left out is kept: what `target` lacks must be sent
    as null to be removed. (Lists are replaced whole; a null value cannot be set, which Kubernetes objects never
    need.)"""
    patch: dict = {key: None for key in source if key not in target}
    for key, value in target.items():
        if key in source and source[key] == value:
            continue
        old = source.get(key)
        patch[key] = merge_patch(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return patch


def owned(isvc: dict) -> dict:
    """The parts of an InferenceService that a rollout writes, and so restores: its spec and annotations. The
    status is the controller's, the rest of the metadata the API server's or other writers'."""
    metadata = {key: isvc["metadata"][key] for key in ("annotations",) if key in isvc["metadata"]}
    return {"metadata": metadata, "spec": isvc["spec"]}


def ready_at(isvc: dict, generation: int) -> bool:
    """Whether the InferenceService is Ready for `generation`: a Ready condition speaks of the generation the
    controller last observed, so right after a patch it is still the previous revision's."""
    status = isvc.get("status") or {}
    return status.get("observedGeneration", 0) >= generation and any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions", []))


def promotion(isvc: dict) -> dict:
    """The merge patch that gives the new revisions all traffic: canaryTrafficPercent removed (null) from each
    component that has it; left out of the patch, it would be kept and the old model keep its share forever."""
    spec = isvc["spec"]
    return {"spec": {component: {"canaryTrafficPercent": None} for component in CANARY_COMPONENTS
                     if "canaryTrafficPercent" in spec.get(component, {})}}


def pinned(isvc: dict) -> dict:
    """The previous spec and annotations with canaryTrafficPercent 0 on each component: KServe then sends all traffic
    to the last revision rolled out in full (the previous model's) while the restored spec's new revision starts.
    Restored at once without a canary, all traffic would go to Knative's latest Ready revision, which until the
    restored one is Ready is the canary that failed."""
    restored = copy.deepcopy(owned(isvc))
    for component in CANARY_COMPONENTS:
        if component in restored["spec"]:
            restored["spec"][component]["canaryTrafficPercent"] = 0
    return restored


def storage_uri(isvc: dict) -> str | None:
    return isvc["spec"]["predictor"].get("model", {}).get("storageUri")


def _api(opts: DeployOptions):
    """The Kubernetes API configured as KServe's client configures it: --kubeconfig, else $KUBECONFIG or
    ~/.kube/config, or the pod's service account inside a cluster. The kubernetes client directly, not through
    kserve's KServeClient: importing kserve registers protobuf symbols that tritonclient.grpc registers too, and
    the two cannot share a process."""
    from kubernetes import client, config

    if opts.kubeconfig or not os.path.isdir("/var/run/secrets/kubernetes.io/"):
        config.load_kube_config(config_file=opts.kubeconfig)
    else:
        config.load_incluster_config()
    return client.CustomObjectsApi()


def _get(api, opts: DeployOptions) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(*RESOURCE, opts.namespace, PLURAL, opts.name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _apply(api, opts: DeployOptions, current: dict | None, isvc: dict) -> dict:
    """Create, or patch the difference (nulls included) from the running object; returns what the server stored,
    with the generation to wait for."""
    if current is None:
        return api.create_namespaced_custom_object(*RESOURCE, opts.namespace, PLURAL, isvc,
                                                   field_manager=FIELD_MANAGER)
    return _patch(api, opts, merge_patch(owned(current), owned(isvc)))


def _patch(api, opts: DeployOptions, patch: dict) -> dict:
    return api.patch_namespaced_custom_object(*RESOURCE, opts.namespace, PLURAL, opts.name, patch,
                                              field_manager=FIELD_MANAGER)


def _wait_ready(api, opts: DeployOptions, generation: int) -> dict | None:
    """The InferenceService once Ready for `generation`, read every --poll-seconds; None after --timeout."""
    deadline = time.monotonic() + opts.timeout
    while True:
        isvc = api.get_namespaced_custom_object(*RESOURCE, opts.namespace, PLURAL, opts.name)
        if ready_at(isvc, generation):
            return isvc
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(opts.poll_seconds, left))


def _judge(ready: dict, opts: DeployOptions) -> tuple[bool, str]:
    """The verdict on the canary transformer's revision (the one whose metrics canary_queries reads), after
    --analysis-seconds."""
    revision = ready["status"]["components"]["transformer"]["latestCreatedRevision"]
    time.sleep(opts.analysis_seconds)
    promote, reason = verdict(canary_health(opts.prometheus_url, opts.namespace, revision, opts.window), opts)
    return promote, f"{reason} (revision {revision})"


def _undo(api, opts: DeployOptions, current: dict | None, why: str) -> NoReturn:
    """Back to what served before: the previous object, or, after a failed first rollout, no InferenceService at
    all rather than one serving a model that failed (the next rollout is then a first one again)."""
    where = f"{opts.namespace}/{opts.name}"
    if current is None:
        api.delete_namespaced_custom_object(*RESOURCE, opts.namespace, PLURAL, opts.name)
        raise RolloutFailed(_report("removed", f"removed {where}: its first rollout failed: {why}", None, why))
    previous = storage_uri(current)
    summary = f"rolled back {where} to {previous}: {why}{_roll_back(api, opts, current)}"
    raise RolloutFailed(_report("rolled-back", summary, previous, why))


def _roll_back(api, opts: DeployOptions, current: dict) -> str:
    """Restore the previous spec and annotations exactly, pinned first (see pinned) until the restored revision is
    Ready; returns what the summary must add when it is not ("" when restored)."""
    generation = _patch(api, opts, merge_patch(owned(_get(api, opts)), pinned(current)))["metadata"]["generation"]
    if _wait_ready(api, opts, generation) is None:
        return (f"; the restored revision was not ready within {opts.timeout:g} s (generation {generation}), so all "
                "traffic stays pinned to the previous revision (canaryTrafficPercent 0)")
    _patch(api, opts, merge_patch(owned(_get(api, opts)), owned(current)))
    return ""


def _report(action: str, summary: str, serving: str | None, reason: str | None = None) -> dict:
    """The one line that says what was done and why, printed; and the result with it."""
    print(summary, flush=True)
    return {"action": action, "summary": summary, "storage_uri": serving, "reason": reason}
