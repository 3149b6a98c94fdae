"""What a training run reports: `metrics.jsonl` lines and Prometheus metrics (served, or pushed).

Only rank 0 reports. The names are a contract with the alerting rules and dashboards.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import fsspec
from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server

from kubeclip.components.storage import atomic_write

log = logging.getLogger(__name__)


class TrainMetrics:
    def __init__(self, out: str, metrics_port: int | None, pushgateway: str | None, start_step: int = 0,
                 job: str = "kubeclip-train"):
        self.fs, self.path = fsspec.core.url_to_fs(f"{out.rstrip('/')}/metrics.jsonl")
        self.curve_path = f"{self.path.rsplit('/', 1)[0]}/curve.json"  # the same records as one JSON list: DVC plots
        # a resumed run keeps the lines up to its checkpoint and logs the rest again
        previous = self.fs.cat_file(self.path).decode().splitlines() if self.fs.exists(self.path) else []
        self.records = [r for r in map(json.loads, previous) if r["step"] <= start_step]
        self.pushgateway, self.job = pushgateway, job
        self.registry = CollectorRegistry()
        gauge = lambda name, doc: Gauge(name, doc, registry=self.registry)  # noqa: E731
        self.loss = gauge("kubeclip_train_loss", "contrastive loss of the last logged step")
        self.lr = gauge("kubeclip_train_learning_rate", "learning rate of the last step")
        self.logit_scale = gauge("kubeclip_train_logit_scale", "the logit scale (1 / temperature)")
        self.samples_per_second = gauge("kubeclip_train_samples_per_second", "training throughput, all processes")
        self.step = gauge("kubeclip_train_step", "the last finished optimiser step")
        self.last_progress = gauge("kubeclip_train_last_progress_timestamp_seconds", "when the last step finished")
        self.last_checkpoint = gauge("kubeclip_train_last_checkpoint_timestamp_seconds",
                                     "when the last checkpoint was committed")
        self.skipped = Counter("kubeclip_train_skipped_steps", "steps skipped for a non-finite loss",
                               registry=self.registry)
        self.data_wait = Counter("kubeclip_train_data_wait_seconds", "time spent waiting for the data loader",
                                 registry=self.registry)
        if metrics_port is not None:
            start_http_server(metrics_port, registry=self.registry)

    def step_done(self, step: int, data_wait: float) -> None:
        self.step.set(step)
        self.last_progress.set(time.time())
        self.data_wait.inc(data_wait)

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl and update the gauges."""
        self.loss.set(record["loss"])
        self.lr.set(record["lr"])
        self.logit_scale.set(record["logit_scale"])
        self.samples_per_second.set(record["samples_per_second"])
        self.records.append(record)
        atomic_write(self.fs, self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())
        atomic_write(self.fs, self.curve_path, json.dumps(self.records).encode())
        self.push()

    def checkpoint_done(self) -> None:
        self.last_checkpoint.set(time.time())
        self.push()

    def push(self) -> None:
        if not self.pushgateway:
            return
        try:
            push_to_gateway(self.pushgateway, job=self.job, registry=self.registry, timeout=5)
        except OSError as e:  # monitoring must never stop training
            log.warning("could not push metrics to %s: %s", self.pushgateway, e)
