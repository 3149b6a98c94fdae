"""Every metric the alerting rules and the Grafana dashboard read, spelled as a scrape shows it
(a histogram by its _bucket/_sum/_count series). test_monitoring.py checks that the rules and the
dashboard use exactly these names; an integration test can check that each appears in a real
scrape of Triton, the transformer and a training run (`up` is Prometheus' own, never scraped)."""

# Triton 2.5x's /metrics, started with --metrics-config summary_latencies=true (the summaries).
TRITON = frozenset({
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_pending_request_count",
    "nv_inference_request_summary_us",
    "nv_inference_queue_summary_us",
})

# Served by the transformer on its HTTP port: the kserve model server's histograms (kserve.metrics) and
# components/serve/transformer.py's count of answered requests by code_class and reason.
TRANSFORMER = frozenset({
    f"request_{phase}_seconds_{suffix}"
    for phase in ("preprocess", "predict", "postprocess")
    for suffix in ("bucket", "sum", "count")
} | {"kubeclip_transformer_requests_total"})

# components/train/metrics.py, served by rank 0 (docs/contracts.md, "Training metrics").
TRAINING = frozenset({
    "kubeclip_train_loss",
    "kubeclip_train_learning_rate",
    "kubeclip_train_logit_scale",
    "kubeclip_train_samples_per_second",
    "kubeclip_train_step",
    "kubeclip_train_skipped_steps_total",
    "kubeclip_train_data_wait_seconds_total",
    "kubeclip_train_last_progress_timestamp_seconds",
    "kubeclip_train_last_checkpoint_timestamp_seconds",
})

# Written by Prometheus for every scrape target.
PROMETHEUS = frozenset({"up"})

METRIC_NAMES = TRITON | TRANSFORMER | TRAINING | PROMETHEUS
