"""The canary's verdict, read in Prometheus: the transformer's answers of one revision over a window.

The transformer is the only client of Triton and the one place that tells a client's mistake (4xx) from a
server fault, so only its server errors count against a canary: no client can fail one.
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubeclip.components.deploy.step import DeployOptions

# The transformer's answers that are the server's fault: 5xx except "busy", the 503 it sheds load with by design
# (manifests/base/monitoring/serving/kubeclip-serving.yaml's error alert reads the same).
SERVER_ERRORS = 'code_class="5xx", reason!="busy"'


@dataclass(frozen=True)
class Health:
    requests: float
    error_ratio: float
    p99_ms: float
    successes: float  # 2xx: a canary whose every answer is a 4xx may be refusing good input


def query(prometheus_url: str, promql: str) -> float:
    """The value of an instant query that yields one number (0 when it yields nothing)."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus query failed: {body.get('error', body)}")
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def canary_queries(namespace: str, revision: str, window: str) -> dict[str, str]:
    """The PromQL of a revision's answered requests, server errors and p99 latency (s) over the window.

    All read the transformer, the only client of Triton and the one place that tells a client's mistake (4xx)
    from a server fault; Triton's nv_inference_request_failure counts the input a client got wrong too.
    Latency is kserve's request_predict_seconds: the call to Triton as the transformer waits for it (network,
    queueing and the whole ensemble), over exactly the window and summable across replicas, which Triton's
    per-replica summary quantiles are not.
    """
    where = f'namespace="{namespace}", revision="{revision}"'
    requests = f"kubeclip_transformer_requests_total{{{where}}}"
    server_errors = f"kubeclip_transformer_requests_total{{{where}, {SERVER_ERRORS}}}"
    successes = f'kubeclip_transformer_requests_total{{{where}, code_class="2xx"}}'
    latency = f"request_predict_seconds_bucket{{{where}}}"
    return {"requests": f"sum(increase({requests}[{window}]))",
            "server_errors": f"sum(increase({server_errors}[{window}]))",
            "successes": f"sum(increase({successes}[{window}]))",
            "p99_seconds": f"histogram_quantile(0.99, sum by (le) (rate({latency}[{window}])))"}


def canary_health(prometheus_url: str, namespace: str, revision: str, window: str) -> Health:
    """A revision's figures over the window: every answered request counts (a 4xx shows that traffic reached
    it), only server errors count against it."""
    found = {name: query(prometheus_url, q) for name, q in canary_queries(namespace, revision, window).items()}
    requests, p99 = found["requests"], found["p99_seconds"]
    error_ratio = found["server_errors"] / requests if requests else 0.0
    # NaN: no prediction ran in the window (only 4xx or shed answers), so no latency counts against it
    return Health(requests, error_ratio, 0.0 if math.isnan(p99) else p99 * 1000, found["successes"])


def verdict(health: Health, opts: DeployOptions) -> tuple[bool, str]:
    """(promote?, why): no traffic, too many server errors or a slow p99 rolls back; client mistakes never do."""
    if health.requests == 0:
        return False, f"no requests reached the canary in the last {opts.window}; nothing shows it works"
    if health.successes == 0:
        return False, (f"none of the {health.requests:.0f} requests to the canary succeeded in the last {opts.window}; "
                       "it may be refusing good input")
    if health.error_ratio > opts.max_error_ratio:
        return False, (f"canary server error ratio {health.error_ratio:.2%} is above --max-error-ratio "
                       f"{opts.max_error_ratio:.2%} ({health.requests:.0f} requests)")
    if health.p99_ms > opts.max_p99_ms:
        return False, f"canary p99 latency {health.p99_ms:.0f} ms is above --max-p99-ms {opts.max_p99_ms:.0f}"
    return True, (f"canary healthy: {health.requests:.0f} requests, server error ratio {health.error_ratio:.2%}, "
                  f"p99 {health.p99_ms:.0f} ms")
