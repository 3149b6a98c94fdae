"""Closed-loop load for benchmarks and load tests: `concurrency` clients, each on its own thread and
connection, sending its next request as soon as the previous one is answered, for a fixed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
