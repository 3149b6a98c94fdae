"""Deploy: the dry run prints a valid InferenceService; promote and roll-back decisions are made on
what a real Prometheus server reports about the canary's series."""

import http.server
import json
import subprocess
import sys
import threading
import time

import pytest
import yaml

from components.deploy.step import DeployOptions, canary_health, render, verdict
from components.lineage import write_lineage
from tests.conftest import ROOT, validate_custom_resource
from tests.prometheus import prometheus_server


def test_dry_run_prints_a_valid_inference_service():
    result = subprocess.run([sys.executable, "-m", "components.cli", "deploy", "--namespace", "ml", "--storage-uri",
                             "s3://models/clip/7f3a9c2e1b4d", "--model-id", "7f3a9c2e1b4d", "--canary-percent", "10",
                             "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    isvc = yaml.safe_load(result.stdout)
    validate_custom_resource(isvc)
    assert isvc["metadata"]["name"] == "clip" and isvc["metadata"]["namespace"] == "ml"
    assert isvc["metadata"]["annotations"]["kubeclip.io/model-id"] == "7f3a9c2e1b4d"
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == "s3://models/clip/7f3a9c2e1b4d"
    assert predictor["canaryTrafficPercent"] == 10


def test_annotations_carry_the_repository_lineage_and_replace_the_previous_model_s(tmp_path):
    write_lineage(str(tmp_path / "export"), "export",
                  {"checkpoint": {"url": str(tmp_path / "train"), "sha256": "7f3a" * 16}}, {}, time.time())
    write_lineage(str(tmp_path / "repo"), "triton-repo",
                  {"export": {"url": str(tmp_path / "export"), "model_id": "7f3a7f3a7f3a"}}, {}, time.time())
    result = subprocess.run([sys.executable, "-m", "components.cli", "deploy", "--namespace", "ml", "--storage-uri",
                             "s3://models/clip/7f3a7f3a7f3a", "--model-id", "7f3a7f3a7f3a", "--lineage",
                             str(tmp_path / "repo" / "lineage.json"), "--dry-run"], cwd=ROOT, capture_output=True,
                            text=True)
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


class Series:
    """Triton-shaped metrics of two revisions, counters growing at a fixed rate from the start."""

    def __init__(self, revisions: dict[str, tuple[float, float, float]]):  # revision -> (ok/s, failed/s, p99 us)
        self.revisions, self.start = revisions, time.time()

    def page(self) -> bytes:
        elapsed = time.time() - self.start
        lines = ["# TYPE nv_inference_request_success counter", "# TYPE nv_inference_request_failure counter",
                 "# TYPE nv_inference_request_summary_us summary"]
        for revision, (ok, failed, p99) in self.revisions.items():
            labels = f'namespace="ml",revision="{revision}",model="clip_embed_text",version="1"'
            lines += [f"nv_inference_request_success{{{labels}}} {ok * elapsed}",
                      f"nv_inference_request_failure{{{labels},reason=\"REJECTED\"}} {failed * elapsed}",
                      f'nv_inference_request_summary_us{{{labels},quantile="0.99"}} {p99}']
        return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus server scraping an exporter of good and bad canary revisions every second."""
    series = Series({"clip-predictor-00002": (20.0, 0.0, 40_000), "clip-predictor-00003": (20.0, 5.0, 40_000),
                     "clip-predictor-00004": (20.0, 0.0, 900_000)})

    class Exporter(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = series.page()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    jobs = {"kubeclip-triton": [f"127.0.0.1:{exporter.server_port}"]}
    try:
        with prometheus_server(tmp_path_factory.mktemp("prometheus"), jobs) as url:
            deadline = time.time() + 60
            while time.time() < deadline:  # holding enough samples for a 20 s window
                if canary_health(url, "ml", "clip-predictor-00002", "20s").requests > 100:
                    break
                time.sleep(0.5)
            yield url
    finally:
        exporter.shutdown()


OPTIONS = DeployOptions(namespace="ml", storage_uri="s3://m", canary_percent=10, window="20s")


def test_a_healthy_canary_is_promoted(prometheus):
    promote, reason = verdict(canary_health(prometheus, "ml", "clip-predictor-00002", "20s"), OPTIONS)
    assert promote, reason
    assert "canary healthy" in reason


@pytest.mark.parametrize("revision,why", [("clip-predictor-00003", "error ratio"),
                                          ("clip-predictor-00004", "p99 latency"),
                                          ("clip-predictor-00009", "no requests")])
def test_a_bad_canary_is_rolled_back_with_the_reason(prometheus, revision, why):
    health = canary_health(prometheus, "ml", revision, "20s")
    promote, reason = verdict(health, OPTIONS)
    assert not promote and why in reason, reason
    if why == "error ratio":
        assert health.error_ratio == pytest.approx(5 / 25, abs=0.03)
