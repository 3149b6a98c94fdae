"""Closed-loop load for benchmarks and load tests: `concurrency` clients, each on its own thread and
connection, sending its next request as soon as the previous one is answered, for a fixed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Load:
    latencies: np.ndarray  # seconds, of the requests that started after the warm-up and succeeded
    failures: list[str]  # what each failed request raised, warm-up included
    elapsed: float  # seconds from the end of the warm-up to the last answer

    @property
    def qps(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile_ms(self, q: float) -> float:
        return 1e3 * float(np.percentile(self.latencies, q))

    def summary(self) -> str:
        return (f"{self.qps:8.1f} QPS, p50 {self.percentile_ms(50):7.1f} ms, p99 {self.percentile_ms(99):7.1f} ms "
                f"({len(self.latencies)} requests, {len(self.failures)} failed)")


def closed_loop(connect: Callable[[], Any], send: Callable[[Any, int], None], concurrency: int, duration: float,
                warmup: float = 0.0) -> Load:
    """Client k calls `send(connection, i)` for i = k, k + concurrency, ... on the connection `connect()` gave
    it (closed at the end if it has `close`); a request fails when `send` raises."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures: list[str] = []
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration

    def client(k: int) -> None:
        connection = connect()
        try:
            i = k
            while (sent := time.perf_counter()) < stop_at:
                try:
                    send(connection, i)
                except Exception as e:  # counted and reported, and the client goes on
                    failures.append(f"{type(e).__name__}: {e}")
                else:
                    if sent >= measure_from:
                        latencies[k].append(time.perf_counter() - sent)
                i += concurrency
        finally:
            if hasattr(connection, "close"):
                connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Load(np.array([x for per_client in latencies for x in per_client]), failures,
                time.perf_counter() - measure_from)


class PeakMemory(threading.Thread):
    """The peak RSS of each group of processes (a server and its children), sampled every `interval` seconds
    from `start()` until `stop()`: what a container's memory limit has to hold."""

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.1):
        import psutil  # a dev dependency: load tests and benchmarks only

        super().__init__(daemon=True)
        self._processes = {name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()}
        self._error, self.interval = psutil.Error, interval
        self.peaks = {name: 0 for name in groups}
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            for name, processes in self._processes.items():
                total = 0
                for process in processes:
                    try:
                        total += process.memory_info().rss
                    except self._error:
                        pass  # a child that has exited
                self.peaks[name] = max(self.peaks[name], total)

    def stop(self) -> dict[str, int]:
        self._stopped.set()
        self.join()
        return self.peaks


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Triton and its Python-backend stubs)."""
    import psutil

    process = psutil.Process(pid)
    return [pid, *(child.pid for child in process.children(recursive=True))]


def memory_limit(manifest: str | Path, container: str) -> int:
    """The memory limit, in bytes, of the container named `container` in a manifest (a ServingRuntime, or an
    InferenceService's transformer): what PeakMemory's figures are held to."""
    import yaml

    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for document in yaml.safe_load_all(Path(manifest).read_text()):
        spec = document.get("spec", {})
        for c in spec.get("containers", []) + spec.get("transformer", {}).get("containers", []):
            if c.get("name") == container and "memory" in c.get("resources", {}).get("limits", {}):
                value = c["resources"]["limits"]["memory"]
                return int(value[:-2]) * units[value[-2:]]
    raise ValueError(f"{manifest}: no memory limit for a container named {container}")
