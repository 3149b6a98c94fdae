"""Deploy: the dry run prints a valid InferenceService; promote and roll-back decisions are made on
what a real Prometheus server reports about the canary's series."""

import http.server
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import yaml

from components.deploy.step import DeployOptions, canary_health, verdict
from components.serve.triton_server import free_port
from tests.conftest import ROOT, require, validate_custom_resource


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
    require(shutil.which("prometheus") is not None, "prometheus", "apt-get install -y prometheus (make system-deps)")
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
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "kubeclip-triton",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter.server_port}"]}]}]}))
    port = free_port()
    server = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # ready, and holding enough samples for a 20 s window
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1)
                if canary_health(url, "ml", "clip-predictor-00002", "20s").requests > 100:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
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
