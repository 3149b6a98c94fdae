"""The deploy step: roll a Triton repository out as the `clip` InferenceService, safely.

Create or patch the InferenceService (storageUri, and the model id and lineage as annotations), wait until it is
Ready; with a canary, watch the new revision's error ratio and p99 latency in Prometheus, then
promote it to all traffic or roll back with the reason. After the first rollout this step owns
`storageUri` and the `kubeclip.io/model-id` annotation (its patches carry the field manager
`kubeclip-deploy`); re-applying an overlay with `kubectl apply --server-side` then reports a
conflict on those fields instead of silently rolling back to the overlay's default model.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import fsspec
import yaml

from components.lineage import chain
from components.options import option

TEMPLATE = Path(__file__).resolve().parents[2] / "manifests" / "base" / "serving" / "clip.yaml"
MODEL_ID_ANNOTATION = "kubeclip.io/model-id"
LINEAGE_ANNOTATION = "kubeclip.io/lineage"  # one JSON entry per step back to the data (components/lineage.chain)
GIT_COMMIT_ANNOTATION = "kubeclip.io/git-commit"  # the commit that packaged the repository
FIELD_MANAGER = "kubeclip-deploy"
MODELS = 'model=~"clip_embed_text|clip_embed_image"'


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
    max_error_ratio: float = option(0.01, "roll back above this share of failed requests")
    max_p99_ms: float = option(500.0, "roll back above this p99 latency (ms)")
    analysis_seconds: float = option(300.0, "how long to watch the canary")
    window: str = option("5m", "Prometheus range over which the canary's figures are computed")
    timeout: float = option(600.0, "seconds to wait for the InferenceService to become Ready")
    dry_run: bool = option(False, "print the InferenceService this would apply, and change nothing")


@dataclass(frozen=True)
class Health:
    requests: float
    error_ratio: float
    p99_ms: float


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
    predictor = isvc["spec"]["predictor"]
    predictor["model"]["storageUri"] = opts.storage_uri
    if opts.canary_percent is not None:
        if not 0 < opts.canary_percent < 100:
            raise SystemExit(f"--canary-percent must be between 1 and 99, got {opts.canary_percent}")
        predictor["canaryTrafficPercent"] = opts.canary_percent
    else:
        predictor.pop("canaryTrafficPercent", None)
    return isvc


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


def query(prometheus_url: str, promql: str) -> float:
    """The value of an instant query that yields one number (0 when it yields nothing)."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus query failed: {body.get('error', body)}")
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def canary_health(prometheus_url: str, namespace: str, revision: str, window: str) -> Health:
    where = f'namespace="{namespace}", revision="{revision}", {MODELS}'
    success = query(prometheus_url, f"sum(increase(nv_inference_request_success{{{where}}}[{window}]))")
    failure = query(prometheus_url, f"sum(increase(nv_inference_request_failure{{{where}}}[{window}]))")
    p99_us = query(prometheus_url, f'max(nv_inference_request_summary_us{{{where}, quantile="0.99"}})')
    total = success + failure
    return Health(total, failure / total if total else 0.0, p99_us / 1000)


def verdict(health: Health, opts: DeployOptions) -> tuple[bool, str]:
    """(promote?, why)."""
    if health.requests == 0:
        return False, f"no requests reached the canary in the last {opts.window}; nothing shows it works"
    if health.error_ratio > opts.max_error_ratio:
        return False, (f"canary error ratio {health.error_ratio:.2%} is above --max-error-ratio "
                       f"{opts.max_error_ratio:.2%} ({health.requests:.0f} requests)")
    if health.p99_ms > opts.max_p99_ms:
        return False, f"canary p99 latency {health.p99_ms:.0f} ms is above --max-p99-ms {opts.max_p99_ms:.0f}"
    return True, (f"canary healthy: {health.requests:.0f} requests, error ratio {health.error_ratio:.2%}, "
                  f"p99 {health.p99_ms:.0f} ms")


def deploy(opts: DeployOptions) -> dict:
    """Apply, wait, and (with a canary) watch then promote or roll back; returns what happened."""
    if opts.dry_run:
        isvc = render(opts)
        print(yaml.safe_dump(isvc, sort_keys=False))
        return {"action": "dry-run", "inferenceservice": isvc}
    from kserve import KServeClient
    from kubernetes import client

    kserve = KServeClient()
    api = client.CustomObjectsApi()
    current = _get(kserve, opts)
    isvc = render(opts, current)
    if current is None:
        api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", opts.namespace, "inferenceservices", isvc,
                                            field_manager=FIELD_MANAGER)
    else:
        _patch(api, opts, isvc)
    kserve.wait_isvc_ready(opts.name, opts.namespace, timeout_seconds=int(opts.timeout))
    if opts.canary_percent is None:
        return {"action": "deployed", "storage_uri": opts.storage_uri}
    if not opts.prometheus_url:
        raise SystemExit("--canary-percent needs --prometheus-url to judge the canary")

    revision = _get(kserve, opts)["status"]["components"]["predictor"]["latestCreatedRevision"]
    time.sleep(opts.analysis_seconds)
    promote, reason = verdict(canary_health(opts.prometheus_url, opts.namespace, revision, opts.window), opts)
    # Promote: the new model takes all traffic. Roll back: the previous spec returns whole (storage and
    # model id), so what the InferenceService says is what it serves.
    final = render(opts, current) if promote else copy.deepcopy(current)
    final["spec"]["predictor"].pop("canaryTrafficPercent", None)
    _patch(api, opts, without_server_fields(final))
    if not promote:
        previous = current["spec"]["predictor"]["model"].get("storageUri")
        raise SystemExit(f"rolled back {opts.namespace}/{opts.name} to {previous}: {reason}")
    return {"action": "promoted", "storage_uri": opts.storage_uri, "reason": reason}


def _get(kserve, opts: DeployOptions) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return kserve.get(opts.name, opts.namespace)
    except (ApiException, RuntimeError) as e:
        if "404" in str(e) or "Not Found" in str(e):
            return None
        raise


def _patch(api, opts: DeployOptions, isvc: dict) -> None:
    api.patch_namespaced_custom_object("serving.kserve.io", "v1beta1", opts.namespace, "inferenceservices", opts.name,
                                       isvc, field_manager=FIELD_MANAGER)
