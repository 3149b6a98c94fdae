"""The alerting rules and the dashboard: `promtool check rules` and `promtool test rules` pass, every
alert has a promtool case that fires and one that stays quiet, and the rules and the dashboard read
exactly the metrics named in metric_names.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml

from tests.conftest import require
from tests.manifests.conftest import OVERLAYS, by_kind, dashboard, one
from tests.manifests.metric_names import METRIC_NAMES, PROMETHEUS, TRAINING, TRANSFORMER, TRITON

PROMTOOL_TESTS = Path(__file__).parent / "promtool"
RULES = ["kubeclip-serving", "kubeclip-training"]


@pytest.fixture
def rules(render) -> dict[str, dict]:
    """Each PrometheusRule's spec by name; every overlay that carries one carries the same."""
    found: dict[str, dict] = {}
    for overlay in OVERLAYS:
        for rule in by_kind(render(overlay), "PrometheusRule"):
            name = rule["metadata"]["name"]
            assert found.setdefault(name, rule["spec"]) == rule["spec"], f"{overlay} changes {name}"
    assert sorted(found) == RULES
    return found


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    require(shutil.which("promtool") is not None, "promtool",
            "`apt-get install -y prometheus` (Debian/Ubuntu; `make system-deps` does it as root), "
            "or take promtool from a Prometheus release")
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def write_rules(tmp_path: Path, name: str, spec: dict) -> Path:
    """promtool reads plain rule files, not PrometheusRule objects: write the object's spec as one."""
    path = tmp_path / f"{name}.rules.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.parametrize("name", RULES)
def test_promtool_checks_the_rules(rules, tmp_path, name):
    path = write_rules(tmp_path, name, rules[name])
    result = promtool("check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", RULES)
def test_promtool_unit_tests_pass(rules, tmp_path, name):
    write_rules(tmp_path, name, rules[name])
    shutil.copy(PROMTOOL_TESTS / f"{name}.test.yaml", tmp_path)
    result = promtool("test", "rules", f"{name}.test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", RULES)
def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet(rules, name):
    alerts = {r["alert"] for group in rules[name]["groups"] for r in group["rules"] if "alert" in r}
    cases = yaml.safe_load((PROMTOOL_TESTS / f"{name}.test.yaml").read_text())
    assert cases["rule_files"] == [f"{name}.rules.yaml"]
    fires, quiet = set(), set()
    for case in cases["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fires == set(), "alerts no case fires"
    assert alerts - quiet == set(), "alerts no case keeps quiet"
    assert fires | quiet <= alerts, "cases for alerts that do not exist"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (Grafana's variables replaced by plain values)."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = re.sub(r"\$\{?\w+\}?", "x", expr)
    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def dashboard_queries(board: dict) -> list[str]:
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: {query}"
            queries.append(match.group(1))
    return queries


def test_rules_and_dashboard_read_exactly_the_listed_metrics(rules):
    exprs = [r["expr"] for spec in rules.values() for group in spec["groups"] for r in group["rules"]]
    exprs += dashboard_queries(dashboard())
    used = set().union(*map(metric_names, exprs))
    assert used - METRIC_NAMES == set(), "metrics that metric_names.py does not list"
    assert METRIC_NAMES - used == set(), "listed metrics nothing reads"
    assert METRIC_NAMES == TRITON | TRANSFORMER | TRAINING | PROMETHEUS
    assert all(n.startswith("kubeclip_train_") for n in TRAINING)


def test_metric_names_reads_selectors_not_labels_or_functions():
    assert metric_names('sum by (model) (rate(a_total{job="x"}[5m])) / on (pod) group_left b'
                        ' unless absent_over_time(c{namespace="$namespace"}[$__rate_interval]) or time() - d') == {
        "a_total", "b", "c", "d"}


def test_dashboard_is_one_configmap_for_grafana(render):
    objects = render("monitoring")
    configmap = one(objects, "ConfigMap")
    assert configmap["metadata"]["name"] == "kubeclip-dashboard"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = dashboard()
    assert json.loads(configmap["data"]["kubeclip-dashboard.json"]) == board
    assert board["uid"] == "kubeclip"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    for overlay in OVERLAYS:
        if overlay != "monitoring":
            assert not by_kind(render(overlay), "ConfigMap"), f"{overlay} carries a dashboard copy"
