"""One real Prometheus for the deploy tests (the canary verdicts and the rollouts judge the same series): it
scrapes an exporter of good and bad canary revisions of the transformer on loopback."""

import http.server
import threading
import time
from math import inf

import pytest

from kubeclip.components.deploy.canary import canary_health
from tests.prometheus import prometheus_server

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, inf)  # kserve's
# Answers a second by (code_class, reason), and each prediction's latency (s). The flood and the burst are the
# per-minute rates of the error-ratio cases in tests/manifests/promtool/kubeclip-serving.test.yaml.
OK = {("2xx", "ok"): 540}
REVISIONS = {
    "clip-transformer-00002": (OK, 0.04),
    "clip-transformer-00003": (OK | {("4xx", "invalid"): 300, ("4xx", "too_large"): 120}, 0.04),  # client flood
    "clip-transformer-00004": (OK | {("5xx", "busy"): 60}, 0.04),  # load shedding
    "clip-transformer-00005": (OK | {("5xx", "predictor_error"): 40, ("5xx", "deadline"): 20}, 0.04),  # server burst
    "clip-transformer-00006": (OK, 0.9),
    "clip-transformer-00007": ({("4xx", "invalid"): 540}, 0.04),  # refuses everything it is sent
}
# What Triton says of the flood: the truncated images fail in its Python preprocessing. The canary must not read it.
TRITON_FLOOD = {"revision": "clip-transformer-00003", "success": 540, "failure": 300}


class Series:
    """The transformer's metrics of each revision, counters growing at fixed rates from the start, and Triton's
    count of the flood as failures."""

    def __init__(self):
        self.start = time.time()

    def page(self) -> bytes:
        elapsed = time.time() - self.start
        lines = ["# TYPE kubeclip_transformer_requests_total counter", "# TYPE request_predict_seconds histogram",
                 "# TYPE nv_inference_request_success counter", "# TYPE nv_inference_request_failure counter"]
        for revision, (answers, latency) in REVISIONS.items():
            where = f'namespace="ml",revision="{revision}"'
            lines += [f'kubeclip_transformer_requests_total{{{where},code_class="{code_class}",reason="{reason}"}} '
                      f"{per_second * elapsed}" for (code_class, reason), per_second in answers.items()]
            # kserve times every prediction, failed or not; 4xx and shed requests never reach it
            predicted = elapsed * sum(n for (code_class, reason), n in answers.items()
                                      if code_class != "4xx" and reason != "busy")
            for le in BUCKETS:
                bound = "+Inf" if le == inf else le
                lines.append(f'request_predict_seconds_bucket{{{where},model_name="clip",le="{bound}"}} '
                             f"{predicted if latency <= le else 0}")
        triton = f'namespace="ml",revision="{TRITON_FLOOD["revision"]}",model="clip_embed_image",version="1"'
        lines += [f"nv_inference_request_success{{{triton}}} {TRITON_FLOOD['success'] * elapsed}",
                  f'nv_inference_request_failure{{{triton},reason="BACKEND"}} {TRITON_FLOOD["failure"] * elapsed}']
        return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory):
    """A real Prometheus server scraping an exporter of good and bad canary revisions every second."""
    series = Series()

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
    jobs = {"kubeclip-transformer": [f"127.0.0.1:{exporter.server_port}"]}
    try:
        with prometheus_server(tmp_path_factory.mktemp("prometheus"), jobs) as url:
            deadline = time.time() + 60
            while time.time() < deadline:  # holding 10 s of samples, so that one more moves a count by 10% at most
                if canary_health(url, "ml", "clip-transformer-00002", "20s").requests > 540 * 10:
                    break
                time.sleep(0.5)
            yield url
    finally:
        exporter.shutdown()


