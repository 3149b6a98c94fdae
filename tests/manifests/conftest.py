"""Every overlay under manifests/overlays rendered once with `kubectl kustomize`, and the helpers the
manifests' tests share."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SCHEMAS, require, validate_custom_resource

MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.parent.name for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
BASES = sorted(str(p.parent.relative_to(MANIFESTS / "base")) for p in (MANIFESTS / "base").rglob("kustomization.yaml"))
SERVING_OVERLAYS = ["serving-dev", "serving-prod"]
# The Kubernetes release whose built-in schemas the manifests must satisfy (kubectl's own here).
KUBERNETES_VERSION = "1.32"


def kustomize(path: Path) -> list[dict]:
    require(shutil.which("kubectl") is not None, "kubectl",
            "install kubectl >= 1.27 (`kubectl kustomize` renders the manifests offline)")
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [o for o in yaml.safe_load_all(out.stdout) if o]


_RENDERED: dict[str, list[dict]] = {}


@pytest.fixture
def render():
    """render(overlay) -> a fresh copy of that overlay's objects (each overlay is rendered once)."""
    def _render(overlay: str) -> list[dict]:
        if overlay not in _RENDERED:
            _RENDERED[overlay] = kustomize(MANIFESTS / "overlays" / overlay)
        return copy.deepcopy(_RENDERED[overlay])
    return _render


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def validate(obj: dict) -> None:
    """Validate one rendered object strictly: a custom resource against its JSON Schema in
    ../shared/schemas, anything else against Kubernetes' own strict schemas. An unknown kind or an
    unknown field raises; nothing is let through with a warning."""
    import kubernetes_validate

    group, _, version = obj["apiVersion"].rpartition("/")
    if group and "." in group and not group.endswith(".k8s.io"):  # a custom resource
        require(SCHEMAS.is_dir(), f"schemas {SCHEMAS}", "the custom resource schemas live in ../shared/schemas")
        schema = SCHEMAS / group / f"{obj['kind'].lower()}_{version}.json"
        if not schema.is_file():
            pytest.fail(f"{obj['kind']} {obj['apiVersion']} has no schema in {SCHEMAS}: an unknown kind")
        validate_custom_resource(obj)
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"{obj['kind']} {obj['apiVersion']} is not a Kubernetes {KUBERNETES_VERSION} kind: {e.message}")


def containers(obj: dict) -> Iterator[tuple[str, dict, dict]]:
    """(where, container, pod securityContext) for every container an object runs. For an
    InferenceService's predictor the container is the model spec, which KServe merges into the
    ServingRuntime's container (checked on its own)."""
    kind, spec = obj["kind"], obj.get("spec", {})
    name = f"{kind}/{obj['metadata']['name']}"
    if kind == "PyTorchJob":
        for replica, rs in spec["pytorchReplicaSpecs"].items():
            pod = rs["template"]["spec"]
            for c in pod.get("initContainers", []) + pod["containers"]:
                yield f"{name} {replica}/{c['name']}", c, pod.get("securityContext", {})
    elif kind in ("ServingRuntime", "ClusterServingRuntime"):
        for c in spec["containers"]:
            yield f"{name} {c['name']}", c, {}
    elif kind == "InferenceService":
        for component in ("predictor", "transformer", "explainer"):
            part = spec.get(component)
            if part is None:
                continue
            for c in part.get("containers", []):
                yield f"{name} {component}/{c['name']}", c, part.get("securityContext", {})
            if "model" in part:
                yield f"{name} {component}/model", part["model"], part.get("securityContext", {})
    elif "template" in spec:  # Deployment, StatefulSet, DaemonSet, Job
        pod = spec["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{name} {c['name']}", c, pod.get("securityContext", {})
    elif kind == "Pod":
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield f"{name} {c['name']}", c, spec.get("securityContext", {})


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))


def dashboard() -> dict:
    return json.loads((MANIFESTS / "base/monitoring/dashboard/kubeclip-dashboard.json").read_text())
