"""benchmarks/gpu_check.py runs only where a GPU is lent; a CPU smoke run keeps it working in between,
and its fp16 parity holds on the CPU too."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--model", "tiny-vit",
                           "--batches", "2", "--train-batch", "4", "--rounds", "1", "--seconds", "0.01",
                           "--skip", "onnx", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert {(r["tower"], r["dtype"]) for r in rows["towers"]} == {
        (tower, dtype) for tower in ("image", "text") for dtype in ("fp32", "fp16", "bf16")}
    assert all(r["cosine_min"] >= 0.999 for r in rows["towers"] if r["dtype"] == "fp16")
    assert all(r["per_s"] > 0 for r in rows["towers"])
    train = rows["train"]
    assert train["samples_per_s"] > 0 and train["model_tflops_per_sample"] > 0 and train["mfu"] is None
