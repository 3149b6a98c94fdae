"""Training runs for real: torchrun with several processes and node agents, a worker killed and the
run resumed, the checkpoint and metrics contracts (docs/contracts.md), the Prometheus endpoint while training."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch

from kubeclip import model
from kubeclip.components.datasets import captions, read_samples, shard_urls
from kubeclip.components.export.step import ExportOptions, export
from kubeclip.components.train import step as train_step
from kubeclip.components.train.checkpoints import MARKER, STATE_FILE, Checkpoints, load_state
from kubeclip.components.serve.triton_server import free_port
from tests.conftest import ROOT, takes_ctrl_c
from kubeclip.model.tokenizer import ClipTokenizer, load_tokenizer
from tests.manifests.metric_names import TRAINING

TINY = ["--model", "tiny-vit", "--batch-size", "8", "--workers", "1", "--shuffle-buffer", "16", "--log-every", "2",
        "--warmup", "2"]


def kubeclip(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "kubeclip.components.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def weights(out: Path) -> dict[str, torch.Tensor]:
    return model.load(out).state_dict()


def test_checkpoints_metrics_and_resume_follow_the_contract(shards, tmp_path):
    out = tmp_path / "run"
    finish(kubeclip("train", "--data", shards, "--out", str(out), "--steps", "6", "--checkpoint-every", "2",
                    "--keep-last", "2", *TINY))
    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000006"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["step-00000004", "step-00000006"]
    step_dir = checkpoints / "step-00000006"
    assert {p.name for p in step_dir.iterdir()} >= {"model.safetensors", "config.json", STATE_FILE, MARKER, "tokenizer"}
    state = torch.load(step_dir / STATE_FILE, weights_only=True)
    assert state["step"] == 6 and state["batches"] == 6
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert set(records[-1]) >= {"step", "loss", "lr", "logit_scale", "samples_per_second", "data_wait_seconds", "time"}
    assert records[-1]["logit_scale"] == pytest.approx(1 / 0.07, rel=0.01)

    # --steps is the total: resuming to 8 trains two more steps and logs them
    finish(kubeclip("train", "--data", shards, "--out", str(out), "--steps", "8", "--checkpoint-every", "2",
                    "--resume", "latest", *TINY))
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4, 6, 8]
    assert (checkpoints / "latest").read_text().strip() == "step-00000008"


def test_a_tokenizer_fitted_to_the_captions_trains_resumes_and_exports(shards, tmp_path):
    out, fit = tmp_path / "run", ["--fit-tokenizer", "400", "--checkpoint-every", "2", *TINY]
    finish(kubeclip("train", "--data", shards, "--out", str(out), "--steps", "2", *fit))
    finish(kubeclip("train", "--data", shards, "--out", str(out), "--steps", "3", "--resume", "latest", *fit))
    clip = model.load(out)
    tok = clip.tokenizer
    assert tok.vocab_size == clip.config.text.vocab_size == 514 + len(tok.merges) < 900  # not CLIP's 49,408
    assert clip.state_dict()["token_embedding.weight"].shape[0] == tok.vocab_size
    _, files = next(read_samples(shard_urls(shards, "train")[0]))
    caption = captions(files)[0]
    assert len(tok.encode(caption)) == len(ClipTokenizer().encode(caption))  # the captions' words: one token each

    report = export(ExportOptions(checkpoint=str(out), out=str(tmp_path / "export"), parity_images=8))
    assert all(report["gates"].values()), report["gates"]  # ONNX Runtime's text tower, on the fitted ids
    texts = [caption, "a zebra beside a yellow dodecahedron"]  # words no caption used: spelt in known pieces
    assert torch.equal(load_tokenizer(tmp_path / "export" / "tokenizer")(texts), tok(texts))


def test_a_resnet_tower_trains_channels_last_and_resumes_to_the_same_weights(shards, tmp_path):
    """ResNet towers train in channels-last memory (faster convolutions); checkpoints, BatchNorm statistics and
    optimizer state still round-trip, so a resumed run ends where an uninterrupted one does."""
    opts = train_step.TrainOptions(data=shards, out=str(tmp_path / "whole"), model="tiny-rn", steps=4, batch_size=8,
                                   workers=0, shuffle_buffer=16, warmup=2, log_every=2, checkpoint_every=2)
    train_step.train(opts)
    resumed = tmp_path / "resumed"
    train_step.train(replace(opts, out=str(resumed), steps=2))
    train_step.train(replace(opts, out=str(resumed), resume="latest"))

    whole, again = weights(tmp_path / "whole"), weights(resumed)
    assert any("running_mean" in k for k in whole)
    assert max((whole[k].float() - again[k].float()).abs().max().item() for k in whole) <= 1e-6


def test_torchrun_with_two_node_agents_trains(shards, tmp_path):
    port, out = free_port(), tmp_path / "run"
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node",
                                "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id",
                                "two-nodes", "-m", "kubeclip.components.train", "--data", shards, "--out", str(out),
                                "--steps", "4", "--checkpoint-every", "4", *TINY],
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for agent in agents:
        finish(agent)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["parameters"]["world_size"] == 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000004"


def test_killed_worker_restarts_and_ends_with_the_same_weights(shards, tmp_path):
    args = ["--data", shards, "--steps", "24", "--checkpoint-every", "4", "--resume", "latest", *TINY]
    finish(kubeclip("train", "--out", str(tmp_path / "whole"), "--nproc-per-node", "2", *args))

    out = tmp_path / "killed"
    launcher = kubeclip("train", "--out", str(out), "--nproc-per-node", "2", "--max-restarts", "1", *args)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "latest").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (out / "checkpoints" / "latest").exists(), "no checkpoint was committed"
    agent = next(p for p in psutil.Process(launcher.pid).children() if "torch.distributed.run" in p.cmdline())
    workers = agent.children()  # the training processes torchrun started (their data loaders are below them)
    assert len(workers) == 2
    workers[-1].send_signal(signal.SIGKILL)
    output = finish(launcher)
    assert "exitcode: -9" in output  # torchrun saw the kill, restarted, and the run still finished

    whole, resumed = weights(tmp_path / "whole"), weights(out)
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) <= 1e-6


def test_ctrl_c_stops_training_cleanly_and_the_same_command_resumes(shards, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", shards, "--out", str(out), "--steps", "60", "--checkpoint-every", "2",
            "--resume", "latest", *TINY, "--workers", "2"]  # loader workers get the Ctrl-C too
    process = kubeclip(*args, start_new_session=True, preexec_fn=takes_ctrl_c)
    deadline = time.time() + 180
    while not (out / "checkpoints" / "latest").exists():
        assert time.time() < deadline and process.poll() is None, "no checkpoint was committed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130 and output.strip().splitlines()[-1] == "kubeclip: interrupted", output
    assert "Traceback" not in output, output

    finish(kubeclip(*args))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 60 and steps == sorted(set(steps)), steps
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000060"


def test_a_killed_budgeted_run_resumes_with_its_schedule_and_the_time_it_had_left(shards, tmp_path):
    out, budget = tmp_path / "run", 24
    args = ["train", "--data", shards, "--out", str(out), "--time-budget", f"{budget}s", "--checkpoint-every", "20",
            "--resume", "latest", *TINY]
    process = kubeclip(*args)
    deadline = time.time() + 180
    while not (out / "checkpoints" / "latest").exists():
        assert time.time() < deadline and process.poll() is None, "no checkpoint was committed"
        time.sleep(0.1)
    time.sleep(budget / 3)
    process.kill()
    process.wait()
    state = load_state(Checkpoints(str(out)).latest())[1]
    assert state["step"] > state["schedule"]["warmup"] and state["budget_seconds"] < budget, state

    started = time.time()
    finish(kubeclip(*args))
    resumed_seconds = time.time() - started
    lineage = json.loads((out / "lineage.json").read_text())["parameters"]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lineage["warmup"] == state["schedule"]["warmup"]  # warmup is done: the resumed run keeps it
    assert lineage["steps"] == logged[-1]["step"] > state["step"] and logged[-1]["lr"] < 0.05 * 5e-4  # decayed
    # the resumed run spends only what the budget had left when the checkpoint was written (plus start-up)
    assert resumed_seconds < budget - state["budget_seconds"] + 15, (resumed_seconds, state["budget_seconds"])


def test_metrics_endpoint_serves_the_named_metrics_while_training(shards, tmp_path):
    port = free_port()
    process = kubeclip("train", "--data", shards, "--out", str(tmp_path / "run"), "--steps", "400",
                       "--checkpoint-every", "2", "--metrics-port", str(port), *TINY)
    try:
        deadline, page = time.time() + 180, ""
        while time.time() < deadline:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                values = {line.split()[0]: float(line.split()[1]) for line in page.splitlines()
                          if line.startswith("kubeclip_")}
                if values.get("kubeclip_train_step", 0) >= 3 and values.get(
                        "kubeclip_train_last_checkpoint_timestamp_seconds", 0) > 0:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert process.poll() is None, "training ended before the endpoint was read"
        for name in TRAINING:  # every training metric the alerting rules and the dashboard read
            assert name in values, f"{name} missing from\n{page}"
        assert values["kubeclip_train_logit_scale"] == pytest.approx(1 / 0.07, rel=0.01)
    finally:
        process.kill()
        process.wait()


def test_non_finite_losses_are_skipped_then_stop_the_run(shards, tmp_path, monkeypatch):
    """Fault injection: the loss turns NaN from the third step on."""
    calls = {"n": 0}
    real_forward = train_step.ClipLoss.forward

    def flaky(self, *args):
        calls["n"] += 1
        loss = real_forward(self, *args)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(train_step.ClipLoss, "forward", flaky)
    options = train_step.TrainOptions(data=shards, out=str(tmp_path / "run"), steps=20, batch_size=8, workers=0,
                                      shuffle_buffer=16, max_nonfinite=3, checkpoint_every=100)
    with pytest.raises(RuntimeError, match="not finite for 3 steps in a row"):
        train_step.train(options)
