"""The kustomize overlays: each renders, each object validates strictly (built-in kinds against
Kubernetes' schemas, custom resources against ../shared/schemas), and the rendered objects keep the
project's rules: serving never trains, containers run as non-root with limits, no secret values are
committed, the pipeline's RBAC is namespaced and least privilege, and the serving objects agree with
each other (runtime, InferenceService, ServiceAccount, monitors and policies)."""

from __future__ import annotations

import re

import jsonschema
import pytest
import yaml

from kubeclip.components import images
from kubeclip.components.serve.gate import GateLimits
from kubeclip.components.serve.triton_server import restricted_api_args
from tests.manifests.conftest import (BASES, MANIFESTS, OVERLAYS, SERVING_OVERLAYS, by_kind, containers, kustomize,
                                      manifest_files, one, validate)

NAMESPACES = {"serving-dev": "kubeclip-dev", "serving-prod": "kubeclip", "training": "kubeclip",
              "pipeline-rbac": "kubeclip", "monitoring": "monitoring"}
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime", "ClusterTrainingRuntime", "Namespace",
                 "CustomResourceDefinition"}
# What a pipeline run may do, exactly: (API group, resource, verb, the one object it is limited to, or None).
PIPELINE_RIGHTS = {
    ("argoproj.io", "workflowtaskresults", "create", None),  # Argo's emissary executor reports a step's outputs
    ("argoproj.io", "workflowtaskresults", "patch", None),
    ("", "configmaps", "get", "kfp-launcher"),  # KFP v2's driver and launcher: the run's settings
    ("", "secrets", "get", "kubeclip-storage"),  # KFP's launcher: the object store's credentials
    *(("kubeflow.org", "pytorchjobs", v, None) for v in ("create", "get", "list", "delete")),
    ("", "pods", "list", None),  # components/train/launcher.py finds the master pod by label to print its log
    ("", "pods/log", "get", None),
    *(("serving.kserve.io", "inferenceservices", v, None) for v in ("create", "get", "patch", "delete")),
}


def test_the_issue_s_overlays_exist():
    assert {"serving-dev", "serving-prod", "training", "pipeline-rbac"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_every_object_validates(render, overlay):
    objects = render(overlay)
    assert objects, f"{overlay} renders nothing"
    for obj in objects:
        validate(obj)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_sets_its_namespace_on_every_object(render, overlay):
    for obj in render(overlay):
        assert obj["kind"] not in CLUSTER_KINDS, f"{overlay}: {obj['kind']} is cluster-scoped"
        assert obj["metadata"].get("namespace") == NAMESPACES[overlay], f"{overlay}: {obj['kind']}"


@pytest.mark.parametrize("base", BASES)
def test_bases_leave_namespace_and_image_tags_to_overlays(base):
    for obj in kustomize(MANIFESTS / "base" / base):
        assert "namespace" not in obj["metadata"], f"base/{base}: {obj['kind']}/{obj['metadata']['name']}"
        if base == "training":  # components/train/launcher.py uses the template's image as its default
            continue
        for where, container, _ in containers(obj):
            if "image" in container:
                assert ":" not in container["image"].rsplit("/", 1)[-1], f"base/{base}: {where} pins a tag"


def test_validation_fails_on_unknown_kinds_and_fields(render):
    """The validator itself: an unknown field or kind must fail, not warn."""
    objects = render("serving-prod")
    broken_builtin = by_kind(objects, "NetworkPolicy")[0]
    broken_builtin["spec"]["egressRules"] = []
    broken_custom = one(objects, "InferenceService")
    broken_custom["spec"]["predictor"]["replicas"] = 2
    unknown_custom = {"apiVersion": "serving.example.com/v1", "kind": "Model", "metadata": {"name": "x"}}
    unknown_builtin = {"apiVersion": "v1", "kind": "Model", "metadata": {"name": "x"}}
    for obj in (broken_builtin, broken_custom, unknown_custom, unknown_builtin):
        with pytest.raises((pytest.fail.Exception, jsonschema.ValidationError)):
            validate(obj)


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_serving_overlays_never_start_training(render, overlay):
    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"PyTorchJob", "TrainJob", "Job", "CronJob"}
    assert not [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "train"]


def test_training_overlay_has_the_job_and_its_monitoring(render):
    objects = render("training")
    assert {o["kind"] for o in objects} == {"PyTorchJob", "ServiceAccount", "PodMonitor", "PrometheusRule"}
    job, monitor = one(objects, "PyTorchJob"), one(objects, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]
        assert selector.items() <= pod["metadata"]["labels"].items()
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports
        assert pod["spec"]["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_as_non_root_with_limits(render, overlay):
    for obj in render(overlay):
        for where, container, pod_security in containers(obj):
            security = {**pod_security, **container.get("securityContext", {})}
            if obj["kind"] == "InferenceService" and where.endswith("predictor/model"):
                security = pod_security  # merged into the runtime's container, checked on its own
            else:
                assert security.get("allowPrivilegeEscalation") is False, where
                assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser", 1000) != 0, where
            limits = container.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= limits.keys(), f"{where} has no cpu and memory limits"


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_serving_containers_have_read_only_root_filesystems(render, overlay):
    for obj in render(overlay):
        for where, container, _ in containers(obj):
            if not where.endswith("/model"):
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, where


def test_no_secret_values_are_committed(render):
    documents = [(str(p.relative_to(MANIFESTS)), d) for p in manifest_files() if p.suffix != ".json"
                 for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]
    documents += [(overlay, o) for overlay in OVERLAYS for o in render(overlay)]
    for where, doc in documents:
        if doc.get("kind") == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{where}: Secret {doc['metadata']['name']}"
        if doc.get("kind") == "ConfigMap":
            assert not re.search(r"AWS_SECRET_ACCESS_KEY|PRIVATE KEY", yaml.safe_dump(doc.get("data", {}))), where


def test_pipeline_rbac_is_namespaced_and_least_privilege(render):
    objects = render("pipeline-rbac")
    assert sorted(o["kind"] for o in objects) == ["Role", "RoleBinding", "ServiceAccount"]
    role, binding, account = one(objects, "Role"), one(objects, "RoleBinding"), one(objects, "ServiceAccount")
    granted = [(g, r, v, n) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"] for n in rule.get("resourceNames", [None])]
    assert len(granted) == len(set(granted)) and set(granted) == PIPELINE_RIGHTS
    assert all(set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"} for rule in role["rules"])
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACES["pipeline-rbac"]}]


def test_no_overlay_grants_cluster_wide_or_wildcard_rights(render):
    for overlay in OVERLAYS:
        for obj in render(overlay):
            assert obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"), overlay
            for rule in obj.get("rules", []) if obj["kind"] == "Role" else []:
                assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], overlay


def _image_constants() -> set[str]:
    return {v for k, v in vars(images).items() if k.isupper() and isinstance(v, str)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_and_named_as_in_components_images(render, overlay):
    known = _image_constants()
    known_repositories = {i.rsplit(":", 1)[0] for i in known}
    unnamed = set()
    for obj in render(overlay):
        for where, container, _ in containers(obj):
            if "image" not in container:
                continue
            repository, _, tag = container["image"].rpartition(":")
            assert repository.startswith("ghcr.io/kubeclip/") and tag and tag != "latest", where
            if repository in known_repositories:
                assert container["image"] in known, \
                    f"{where}: {container['image']} is not what components/images.py says"
            else:
                unnamed.add(container["image"])
    if unnamed:
        pytest.skip(f"components/images.py does not name {sorted(unnamed)} yet")


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_inference_service_and_runtime_agree(render, overlay):
    objects = render(overlay)
    isvc, runtime = one(objects, "InferenceService"), one(objects, "ServingRuntime")
    account = one(objects, "ServiceAccount")
    predictor, transformer = isvc["spec"]["predictor"], isvc["spec"]["transformer"]
    model = predictor["model"]
    assert isvc["metadata"]["name"] == "clip"
    assert model["runtime"] == runtime["metadata"]["name"]
    # The transformer calls Triton over gRPC v2, on the one port the runtime declares (h2c: gRPC).
    assert model["protocolVersion"] == "grpc-v2" and "grpc-v2" in runtime["spec"]["protocolVersions"]
    triton = runtime["spec"]["containers"][0]
    assert [(p["name"], p["containerPort"]) for p in triton["ports"]] == [("h2c", 9000)]
    assert "--grpc-port=9000" in triton["args"]
    assert {k: model["modelFormat"][k] for k in ("name", "version")} in [
        {k: f[k] for k in ("name", "version")} for f in runtime["spec"]["supportedModelFormats"]]
    assert model["storageUri"].startswith("s3://")
    # KServe's defaults would replace resources the InferenceService leaves out, so both carry them.
    assert model["resources"] == runtime["spec"]["containers"][0]["resources"]
    # storage credentials: KServe's s3 annotations on the ServiceAccount, the secret by reference only
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    assert "serving.kserve.io/s3-endpoint" in account["metadata"]["annotations"]
    assert account["secrets"] == [{"name": "kubeclip-storage"}]
    for part in (predictor, transformer):
        assert 1 <= part["minReplicas"] <= part["maxReplicas"]
        assert part["scaleMetric"] and part["scaleTarget"] > 0
    # a replica is sent at most what the transformer takes in progress; scaling starts before that
    assert transformer["containerConcurrency"] == GateLimits().max_concurrent_requests
    if transformer["scaleMetric"] == "concurrency":
        assert transformer["scaleTarget"] <= transformer["containerConcurrency"]
    container = transformer["containers"][0]
    assert container["image"] == images.TRANSFORMER_IMAGE  # the lean image: no torch, no CUDA
    assert container["command"] == ["python", "-m", "kubeclip.components.serve.transformer"]
    args = container["args"]
    assert args[args.index("--predictor_protocol") + 1] == model["protocolVersion"]
    assert not {"--model_name", "--predictor_host", "--http_port"} & set(args)  # KServe injects these


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_triton_serves_prometheus_metrics_with_latency_summaries(render, overlay):
    objects = render(overlay)
    args = one(objects, "ServingRuntime")["spec"]["containers"][0]["args"]
    assert args[0] == "tritonserver"
    assert {"--model-store=/mnt/models", "--allow-metrics=true", "--metrics-port=8002",
            "--metrics-config=summary_latencies=true"} <= set(args)
    triton = next(m for m in by_kind(objects, "PodMonitor") if m["metadata"]["name"] == "kubeclip-triton")
    relabel = triton["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert any(r.get("targetLabel") == "__address__" and r["replacement"].endswith(":8002") for r in relabel)


def test_dev_serves_the_cpu_flavor_in_standard_mode(render):
    objects = render("serving-dev")
    isvc = one(objects, "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["spec"]["predictor"]["model"]["storageUri"].endswith("/cpu")
    assert {isvc["spec"][p]["scaleMetric"] for p in ("predictor", "transformer")} == {"cpu"}
    assert "nvidia.com/gpu" not in yaml.safe_dump(objects)
    assert not by_kind(objects, "AuthorizationPolicy")


def test_prod_serves_the_gpu_flavor_in_knative_mode_with_mesh_policies(render):
    objects = render("serving-prod")
    isvc, runtime = one(objects, "InferenceService"), one(objects, "ServingRuntime")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert isvc["spec"]["predictor"]["model"]["storageUri"].endswith("/gpu")
    assert {isvc["spec"][p]["scaleMetric"] for p in ("predictor", "transformer")} == {"concurrency"}
    for resources in (isvc["spec"]["predictor"]["model"]["resources"], runtime["spec"]["containers"][0]["resources"]):
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    policies = by_kind(objects, "AuthorizationPolicy")
    assert {p["spec"]["selector"]["matchLabels"]["component"] for p in policies} == {"predictor", "transformer"}
    assert all(p["spec"]["action"] == "ALLOW" for p in policies)


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_monitors_and_policies_select_the_service_s_pods(render, overlay):
    """KServe labels the pods serving.kserve.io/inferenceservice=<name> and component=<part>."""
    objects = render(overlay)
    name = one(objects, "InferenceService")["metadata"]["name"]
    selectors = {"PodMonitor": lambda o: o["spec"]["selector"]["matchLabels"],
                 "NetworkPolicy": lambda o: o["spec"]["podSelector"]["matchLabels"],
                 "AuthorizationPolicy": lambda o: o["spec"]["selector"]["matchLabels"]}
    for kind, selector in selectors.items():
        found = [selector(o) for o in by_kind(objects, kind)]
        if kind == "AuthorizationPolicy" and not found:
            continue
        assert sorted(found, key=lambda s: s["component"]) == [
            {"serving.kserve.io/inferenceservice": name, "component": "predictor"},
            {"serving.kserve.io/inferenceservice": name, "component": "transformer"}], f"{overlay}: {kind}"


def test_base_files_are_named_after_their_object():
    """One object per file, named after its metadata.name (plus its kind where names are shared)."""
    for path in (MANIFESTS / "base").rglob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(documents) == 1, path
        name, kind = documents[0]["metadata"]["name"], documents[0]["kind"].lower()
        assert path.stem in (name, f"{name}-{kind}"), path


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_triton_restricts_the_apis_the_local_server_restricts(render, overlay):
    """The same list as components/serve/triton_server.py's RESTRICTED_APIS, behind a key that comes from a
    Secret by reference (Kubernetes expands $(ADMIN_KEY) in args), never a literal."""
    triton = one(render(overlay), "ServingRuntime")["spec"]["containers"][0]
    assert [a for a in triton["args"] if "restricted" in a] == restricted_api_args("$(ADMIN_KEY)")
    env = {e["name"]: e for e in triton["env"]}
    assert "value" not in env["ADMIN_KEY"]
    assert env["ADMIN_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "kubeclip-triton-admin", "key": "admin-key"}}


def _http_probe(path: str, port: int) -> dict:
    return {"httpGet": {"path": path, "port": port}}


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_liveness_and_readiness_probes(render, overlay):
    objects = render(overlay)
    triton = one(objects, "ServingRuntime")["spec"]["containers"][0]
    transformer = one(objects, "InferenceService")["spec"]["transformer"]["containers"][0]
    # kserve 0.21's model server answers liveness on /v2/health/live; a model's readiness on /v2/models/<name>/ready
    assert transformer["livenessProbe"].items() >= _http_probe("/v2/health/live", 8080).items()
    assert transformer["readinessProbe"].items() >= _http_probe("/v2/models/clip/ready", 8080).items()
    if overlay == "serving-dev":  # Standard mode: Triton's own HTTP endpoints
        assert triton["startupProbe"].items() >= _http_probe("/v2/health/live", 8080).items()
        assert triton["livenessProbe"].items() >= _http_probe("/v2/health/live", 8080).items()
        assert triton["readinessProbe"].items() >= _http_probe("/v2/health/ready", 8080).items()
    else:  # Knative mode: TCP on the one declared port (see the next test)
        assert triton["livenessProbe"]["tcpSocket"] == triton["readinessProbe"]["tcpSocket"] == {"port": 9000}
        assert triton["livenessProbe"]["initialDelaySeconds"] >= 60  # Triton opens the port once models loaded


def test_probes_fit_knative_where_knative_runs_them(render):
    """Knative points every HTTP or TCP probe of a serving container at its one declared port (an HTTP probe
    aimed at Triton's 8080 would land on gRPC's 9000 and fail) and takes no startup probe."""
    objects = render("serving-prod")
    assert one(objects, "InferenceService")["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    transformer = one(objects, "InferenceService")["spec"]["transformer"]["containers"][0]
    for container in (one(objects, "ServingRuntime")["spec"]["containers"][0], transformer):
        declared = [p["containerPort"] for p in container["ports"]]
        assert len(declared) == 1 and "startupProbe" not in container, container["name"]
        for kind in ("livenessProbe", "readinessProbe"):
            action = container[kind].get("httpGet") or container[kind]["tcpSocket"]
            assert action["port"] == declared[0], (container["name"], kind)


# Who reaches each component on which port, per overlay: (source, port). Sources are the transformer's pods,
# or namespaces. Knative mode adds its path: Istio's gateways and the activator to queue-proxy (8012 HTTP/1,
# 8013 h2c), the autoscaler to queue-proxy's statistics (9090).
_KNATIVE_PATH = {(ns, port) for ns in ("ns:istio-system", "ns:knative-serving") for port in (8012, 8013)} | {
    ("ns:knative-serving", 9090)}
_STANDARD_PREDICTOR = {("pods:transformer", 8080), ("pods:transformer", 9000), ("ns:monitoring", 8002)}
REACHES = {
    "serving-dev": {"predictor": _STANDARD_PREDICTOR,
                    "transformer": {("ns:monitoring", 8080), ("ns:istio-system", 8080)}},
    "serving-prod": {"predictor": _STANDARD_PREDICTOR | _KNATIVE_PATH,
                     "transformer": {("ns:monitoring", 8080)} | _KNATIVE_PATH},
}


def _sources(peer: dict, name: str) -> list[str]:
    """A peer as "pods:<component>" (pods of the policy's own namespace) or "ns:<name>" each; anything wider
    (every pod, every namespace, IP blocks, namespace and pod selectors combined) fails."""
    assert set(peer) in ({"podSelector"}, {"namespaceSelector"}), f"{name}: {peer}"
    if "podSelector" in peer:
        labels = peer["podSelector"]["matchLabels"]
        assert set(labels) == {"serving.kserve.io/inferenceservice", "component"}, f"{name}: {peer}"
        return [f"pods:{labels['component']}"]
    selector = peer["namespaceSelector"]
    if "matchLabels" in selector:
        assert set(selector) == {"matchLabels"} and len(selector["matchLabels"]) == 1, f"{name}: {peer}"
        return [f"ns:{selector['matchLabels']['kubernetes.io/metadata.name']}"]
    (expression,) = selector["matchExpressions"]
    assert set(selector) == {"matchExpressions"}, f"{name}: {peer}"
    assert expression["key"] == "kubernetes.io/metadata.name" and expression["operator"] == "In", f"{name}: {peer}"
    return [f"ns:{ns}" for ns in expression["values"]]


def _reaches(policy: dict) -> set[tuple[str, int]]:
    """(source, port) for every source and port a NetworkPolicy's ingress rules admit."""
    name, spec = policy["metadata"]["name"], policy["spec"]
    assert spec["policyTypes"] == ["Ingress"], name
    reaches = set()
    for rule in spec["ingress"]:
        assert rule.get("from") and rule.get("ports"), f"{name}: a rule without sources or ports admits all"
        assert all(p["protocol"] == "TCP" and isinstance(p["port"], int) for p in rule["ports"]), name
        reaches |= {(source, p["port"]) for peer in rule["from"] for source in _sources(peer, name)
                    for p in rule["ports"]}
    return reaches


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_network_policies_admit_exactly_these_sources_and_ports(render, overlay):
    for policy in by_kind(render(overlay), "NetworkPolicy"):
        component = policy["spec"]["podSelector"]["matchLabels"]["component"]
        assert _reaches(policy) == REACHES[overlay][component], f"{overlay}: {policy['metadata']['name']}"


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_prometheus_may_scrape_what_the_pod_monitors_scrape(render, overlay):
    objects = render(overlay)
    policies = {o["spec"]["podSelector"]["matchLabels"]["component"]: o for o in by_kind(objects, "NetworkPolicy")}
    for monitor in by_kind(objects, "PodMonitor"):
        policy = policies[monitor["spec"]["selector"]["matchLabels"]["component"]]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            port = endpoint["portNumber"]  # unless a relabeling rewrites the address (Triton's 8002)
            for relabel in endpoint.get("relabelings", []):
                if relabel.get("targetLabel") == "__address__":
                    port = int(relabel["replacement"].rsplit(":", 1)[1])
            assert ("ns:monitoring", port) in _reaches(policy), f"{overlay}: {monitor['metadata']['name']}"
