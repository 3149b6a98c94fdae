"""A real Prometheus server for tests (Debian's `prometheus` package), scraping given targets on loopback
every second and evaluating given rule files."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from kubeclip.components.serve.triton_server import free_port
from tests.conftest import require


@contextlib.contextmanager
def prometheus_server(workdir: Path, jobs: dict[str, list[str]], rule_files: list[Path] = ()) -> Iterator[str]:
    """Its base URL once ready; `jobs` maps job names to HOST:PORT targets."""
    require(shutil.which("prometheus") is not None, "prometheus", "apt-get install -y prometheus (make system-deps)")
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                           for job, targets in jobs.items()]}))
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
                               f"--storage.tsdb.path={workdir / 'data'}",
                               f"--web.listen-address={url.removeprefix('http://')}"],
                              stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("w"))
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError(f"Prometheus did not start:\n{(workdir / 'prometheus.log').read_text()}")
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def api(url: str, path: str, **params: str) -> dict | list:
    """The `data` of a Prometheus HTTP API answer."""
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def instant(url: str, promql: str) -> float | None:
    """The value of a query that selects one series, or None when it selects none."""
    result = api(url, "query", query=promql)["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None
