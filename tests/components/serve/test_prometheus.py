"""Monitoring for real: a Prometheus server scrapes the local Triton and the transformer on loopback, counts
exactly the requests sent, and loads and evaluates the serving alerting rules; every metric the rules and the
dashboard read from Triton or the transformer is in their real scrapes."""

from __future__ import annotations

import re
import time

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.manifests.metric_names import TRANSFORMER, TRITON
from tests.prometheus import api, instant, prometheus_server

SERVING_RULES = ROOT / "manifests" / "base" / "monitoring" / "serving" / "kubeclip-serving.yaml"
SENT = 7


def scraped_names(url: str) -> set[str]:
    page = httpx.get(url, timeout=10).text
    return {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group() for line in page.splitlines()
            if line and not line.startswith("#")}


def embed(transformer: str, text: str) -> None:
    response = httpx.post(f"{transformer}/v1/models/clip:predict", json={"instances": [{"text": text}]}, timeout=60)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def prometheus(server, transformer, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prometheus")
    rules = workdir / "kubeclip-serving.rules.yaml"  # Prometheus reads plain rule files: the object's spec
    rules.write_text(yaml.safe_dump(yaml.safe_load(SERVING_RULES.read_text())["spec"]))
    jobs = {"kubeclip-triton": [server.metrics_url.removeprefix("http://").split("/")[0]],
            "kubeclip-transformer": [transformer.removeprefix("http://")]}
    with prometheus_server(workdir, jobs, [rules]) as url:
        yield url


def wait_for(url: str, promql: str, predicate, timeout: float = 30) -> float | None:
    deadline = time.time() + timeout
    while True:
        value = instant(url, promql)
        if predicate(value) or time.time() > deadline:
            return value
        time.sleep(0.5)


def test_prometheus_counts_exactly_the_requests_sent(prometheus, transformer):
    embed(transformer, "a warm-up")  # so that both series exist before the count starts
    transformer_count = 'sum(request_predict_seconds_count{job="kubeclip-transformer"})'
    triton_count = 'sum(nv_inference_request_success{job="kubeclip-triton",model="clip_embed_text"})'
    local = httpx.get(f"{transformer}/metrics", timeout=10).text
    now = float(re.search(r'^request_predict_seconds_count\{model_name="clip"\} (\S+)$', local, re.M).group(1))
    before = {q: wait_for(prometheus, q, lambda v: v is not None and (q != transformer_count or v == now))
              for q in (transformer_count, triton_count)}
    assert before[transformer_count] == now
    for n in range(SENT):
        embed(transformer, f"request {n}")
    for query, value in before.items():
        assert wait_for(prometheus, query, lambda v: v >= value + SENT) == value + SENT, query
    assert wait_for(prometheus, 'min(up{job=~"kubeclip-triton|kubeclip-transformer"})', lambda v: v == 1) == 1


def test_the_serving_rules_load_and_evaluate(prometheus):
    spec = yaml.safe_load(SERVING_RULES.read_text())["spec"]
    expected = {rule.get("alert") or rule.get("record") for group in spec["groups"] for rule in group["rules"]}
    deadline = time.time() + 30
    while True:
        rules = [rule for group in api(prometheus, "rules")["groups"] for rule in group["rules"]]
        evaluated = {rule["name"] for rule in rules if rule["health"] == "ok" and rule["evaluationTime"] > 0}
        if evaluated == expected or time.time() > deadline:
            break
        time.sleep(0.5)
    assert {rule["name"] for rule in rules} == expected
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert evaluated == expected
    # Both targets are up and serving quickly: no serving alert fires on a healthy local stack.
    firing = [rule["name"] for rule in rules if rule.get("state") == "firing"]
    assert firing == []


def test_every_metric_the_rules_read_is_in_a_real_scrape(server, transformer, prometheus):
    embed(transformer, "so that every series exists")
    assert TRITON <= scraped_names(server.metrics_url), TRITON - scraped_names(server.metrics_url)
    assert TRANSFORMER <= scraped_names(f"{transformer}/metrics")
