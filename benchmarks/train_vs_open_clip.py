"""Training throughput on the CPU: kubeclip's trainer vs open_clip's own training loop, on the same shards.

Both trainers run as subprocesses, as a user starts them, on the same WebDataset shards (drawn once by
`kubeclip prepare synthetic`), with the same model config, per-process batch, AdamW (lr, betas 0.9/0.98,
eps 1e-6, weight decay 0.2), linear warmup + cosine schedule, gradient clipping at 1.0, fp32, loader
workers, seed and number of processes (1: plain python; N > 1: torchrun --nproc-per-node N for both, gloo):

  kubeclip    python -m kubeclip.components.train ...
  open_clip   open_clip_train.main.main(argv) --dataset-type webdataset --local-loss --gather-with-grad
              (kubeclip's loss formulation), from a small wrapper (WRAPPER) that registers our JSON config
              with open_clip and works around two incompatibilities of open_clip_train 3.3 with this
              environment (DDP device_ids on the CPU; webdataset's end-of-shard marker)

Throughput is steady-state training samples/s, read from the trainers' own rank-0 progress logs (kubeclip:
metrics.jsonl lines with their time; open_clip: "Train Epoch" log lines, whose creation time the wrapper
records), not from the wall time of a run, which start-up and exit would blur. It is the median of the
samples/s of the log intervals after --skip-steps: a burst of load from other processes on a shared
machine slows some intervals, not the median. Runs alternate kubeclip, open_clip, open_clip, kubeclip, ...
so that load from other processes hits both alike; the table shows medians over rounds and their ratio
kubeclip / open_clip (goal >= 1.0), and the per-round ratios. Peak memory is the peak of the summed PSS
of a run's whole process tree (trainers and loader workers; shared pages counted once), polled every 0.5 s.

--steps, --skip-steps and --warmup count the steps of a 1-process run; an N-process run (global batch N
times larger) takes 1/N of them, so that every run trains on the same samples.

Each 1-process round also times each trainer's data loader alone (built as the trainer builds it, same
shards, batch and workers, iterated in this process without training), set against what training
consumes per process (kubeclip's samples/s / N): above 1 the loader keeps up on its own. kubeclip's
data wait (the share of a logged step spent waiting for its batch) shows the same during training.

    python benchmarks/train_vs_open_clip.py                      # ~20 min on 2 cores
    python benchmarks/train_vs_open_clip.py --runs 1:2 2:1 --steps 40
    python benchmarks/train_vs_open_clip.py --data DIR --keep    # an existing prepare output; keep the logs

Nothing is downloaded: both models start from random weights, the data is drawn procedurally.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import open_clip
import open_clip_train.data
import psutil

from kubeclip import model
from kubeclip.components.datasets import shard_urls
from kubeclip.components.train import data

ROOT = Path(__file__).resolve().parents[1]
# webdataset >= 0.2.96 ends each shard with an empty dict that open_clip's grouping chokes on
# (KeyError: 'fname'; webdataset issue 384, open_clip issue 935): the fix they give, eof_value=None.
# WRAPPER does the same in open_clip's training processes.
open_clip_train.data.tar_file_expander = functools.partial(open_clip_train.data.tar_file_expander, eof_value=None)

# Run as `python wrapper.py CONFIG.json ARGV.json` (argv in a file: torchrun's own parser would
# otherwise take open_clip's --logs for an abbreviation of its --logs-specs). On rank 0 it appends
# {"params": n} and {"samples": done, "time": t, "loss": l} per progress line to $OPEN_CLIP_PROBE.
WRAPPER = r'''
import functools, json, logging, os, re, sys
import torch, open_clip, open_clip_train.data, open_clip_train.main as oc

def record(**fields):
    if os.environ.get("RANK", "0") == "0":
        with open(os.environ["OPEN_CLIP_PROBE"], "a") as f:
            f.write(json.dumps(fields) + "\n")

class Progress(logging.Handler):
    def emit(self, rec):
        if m := re.match(r"Train Epoch: \d+ \[\s*(\d+)/.* Loss: (\S+)", rec.getMessage()):
            record(samples=int(m[1]), time=rec.created, loss=float(m[2]))

class CpuDDP(torch.nn.parallel.DistributedDataParallel):
    """open_clip passes device_ids=[cpu], which DDP refuses for CPU modules (they take none)."""
    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module, **kwargs)

def counted(*args, **kwargs):
    built = create(*args, **kwargs)
    record(params=sum(p.numel() for p in built[0].parameters()))
    return built

open_clip_train.data.tar_file_expander = functools.partial(open_clip_train.data.tar_file_expander, eof_value=None)
torch.nn.parallel.DistributedDataParallel = CpuDDP
create, oc.create_model_and_transforms = oc.create_model_and_transforms, counted
logging.getLogger().addHandler(Progress())
open_clip.add_model_config(sys.argv[1])
sys.exit(oc.main(json.load(open(sys.argv[2]))))
'''


@dataclass
class Run:
    rate: float  # steady-state samples/s, all processes: median over the log intervals
    samples: int  # samples trained, all processes
    losses: tuple[float, float]  # at the first and the last log
    wall: float  # seconds, start to exit
    peak_mib: float  # peak summed PSS of the process tree
    data_wait: float | None = None  # kubeclip: median share of a logged step spent waiting for data


def steady_rate(points: list[tuple[int, float]], skip_samples: int) -> float:
    """Median samples/s over the intervals between rank-0 log points (samples done, time) from the first
    point at or past `skip_samples`."""
    window = [p for p in points if p[0] >= skip_samples]
    if len(window) < 4:
        raise SystemExit(f"too few log points after the skipped steps: {points}; raise --steps or lower --log-every")
    return statistics.median((s1 - s0) / (t1 - t0) for (s0, t0), (s1, t1) in zip(window, window[1:]))


def launch(nproc: int) -> list[str]:
    """The command prefix that starts a script or module in `nproc` processes."""
    if nproc == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def watch(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run `cmd` to the end, its output in `log`; its wall seconds and peak summed PSS in MiB."""
    start, peak = time.perf_counter(), 0
    with open(log, "w") as out:
        proc = psutil.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            pss = 0
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak = max(peak, pss)
            time.sleep(0.5)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}\nfailed with exit code {proc.returncode}; see {log}")
    return time.perf_counter() - start, peak / 2**20


def run_kubeclip(args, data_dir: Path, work: Path, nproc: int, tag: str) -> Run:
    out = work / f"kubeclip-{tag}"
    cmd = [*launch(nproc), "-m", "kubeclip.components.train", "--data", str(data_dir), "--out", str(out),
           "--model", args.model, "--steps", str(args.steps // nproc), "--batch-size", str(args.batch_size),
           "--workers", str(args.workers), "--lr", str(args.lr), "--warmup", str(args.warmup // nproc),
           "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--weight-decay", "0.2", "--grad-clip", "1.0",
           "--precision", "fp32", "--seed", "0", "--log-every", str(args.log_every)]
    wall, peak = watch(cmd, work / f"kubeclip-{tag}.log", dict(os.environ))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    global_batch = args.batch_size * nproc
    skip = args.skip_steps // nproc
    rate = steady_rate([(r["step"] * global_batch, r["time"]) for r in records], skip * global_batch)
    wait = statistics.median(r["data_wait_seconds"] * r["samples_per_second"] / global_batch
                             for r in records if r["step"] > skip)
    return Run(rate, records[-1]["step"] * global_batch, (records[0]["loss"], records[-1]["loss"]), wall, peak, wait)


def run_open_clip(args, data_dir: Path, work: Path, nproc: int, tag: str) -> tuple[Run, int]:
    """One open_clip run and its model's parameter count."""
    probe, argv_file = work / f"open_clip-{tag}.jsonl", work / f"open_clip-{tag}.argv.json"
    steps = args.steps // nproc
    argv = ["--dataset-type", "webdataset", "--train-data", "::".join(shard_urls(str(data_dir), "train")),
            "--train-num-samples", str(steps * args.batch_size * nproc), "--epochs", "1",
            "--model", Path(config_path(args.model)).stem, "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), "--lr", str(args.lr), "--warmup", str(args.warmup // nproc),
            "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--wd", "0.2", "--grad-clip-norm", "1.0",
            "--local-loss", "--gather-with-grad", "--precision", "fp32", "--device", "cpu",
            "--dist-backend", "gloo", "--seed", "0", "--log-every-n-steps", str(args.log_every),
            "--save-frequency", "0", "--logs", str(work / "open_clip-logs"), "--name", tag]
    argv_file.write_text(json.dumps(argv))
    cmd = [*launch(nproc), str(work / "open_clip_wrapper.py"), config_path(args.model), str(argv_file)]
    wall, peak = watch(cmd, work / f"open_clip-{tag}.log", {**os.environ, "OPEN_CLIP_PROBE": str(probe)})
    records = [json.loads(line) for line in probe.read_text().splitlines()]
    logs = [r for r in records if "samples" in r]
    rate = steady_rate([(r["samples"], r["time"]) for r in logs], args.skip_steps // nproc * args.batch_size * nproc)
    params = next(r["params"] for r in records if "params" in r)
    return Run(rate, logs[-1]["samples"], (logs[0]["loss"], logs[-1]["loss"]), wall, peak), params


def loader_rate(who: str, args, data_dir: Path) -> float:
    """Samples/s of a trainer's training loader alone (built as that trainer builds it, same shards, batch
    and workers), over the same window of batches as a 1-process training run."""
    shards, config = shard_urls(str(data_dir), "train"), config_path(args.model)
    if who == "kubeclip":
        cfg = model.get_config(config)
        stream = data.Stream(shards, args.batch_size, cfg.vision.image_size, cfg.text.context_length, seed=0)
        loader = data.loader(stream, args.workers)
    else:
        open_clip.add_model_config(config)
        name = Path(config).stem
        _, preprocess, _ = open_clip.create_model_and_transforms(name)
        settings = argparse.Namespace(train_data="::".join(shards), train_num_samples=args.steps * args.batch_size,
                                      dataset_resampled=False, train_data_upsampling_factors=None, seed=0,
                                      batch_size=args.batch_size, workers=args.workers, world_size=1)
        loader = open_clip_train.data.get_wds_dataset(settings, preprocess, is_train=True,
                                                      tokenizer=open_clip.get_tokenizer(name)).dataloader
    batches = iter(loader)
    for _ in range(args.skip_steps):
        next(batches)
    start = time.perf_counter()
    for _ in range(args.steps - args.skip_steps):
        next(batches)
    rate = (args.steps - args.skip_steps) * args.batch_size / (time.perf_counter() - start)
    del batches  # shuts its worker processes down
    return rate


def config_path(name: str) -> str:
    """The JSON config file of a built-in model name or a path (open_clip registers it under its stem)."""
    builtin = ROOT / "model" / "configs" / f"{name}.json"
    return str(builtin if builtin.is_file() else Path(name).resolve())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-vit",
                   help="built-in config name or an open_clip-format JSON config (default: %(default)s)")
    p.add_argument("--runs", nargs="+", default=["1:4", "2:2"], metavar="NPROC:ROUNDS",
                   help="process counts and rounds for each; a round is one run of each trainer, in alternating "
                        "order, and with 1 process also one loader-alone pass of each (default: 1:4 2:2)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per process per step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=60,
                   help="steps of a 1-process run; N processes take steps/N (default: %(default)s)")
    p.add_argument("--skip-steps", type=int, default=10,
                   help="steps of a 1-process run left out of the timed window, as --steps (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=2,
                   help="steps between the log points the throughput is read from (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="data loader processes per training process "
                                                          "(default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=10,
                   help="warmup steps of a 1-process run, as --steps (default: %(default)s)")
    p.add_argument("--data", help="an existing prepare output to train on, instead of drawing synthetic shards")
    p.add_argument("--samples", type=int, default=4000, help="synthetic samples to draw (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (data, logs, run outputs)")
    args = p.parse_args()
    try:
        args.runs = [tuple(int(x) for x in spec.split(":")) for spec in args.runs]
        assert all(len(r) == 2 and min(r) > 0 for r in args.runs)
    except (ValueError, AssertionError):
        p.error(f"--runs takes NPROC:ROUNDS pairs, e.g. 1:4 2:2, got {args.runs}")
    for nproc, _ in args.runs:
        if (args.steps // nproc) % args.workers:
            p.error(f"steps per run ({args.steps} // {nproc}) must be a multiple of --workers: open_clip "
                    "rounds its epoch up to whole batches per worker")
    return args


def report(args, results: dict[int, dict[str, list[Run]]], loaders: dict[str, list[float]]) -> None:
    """The table: medians over rounds of each trainer, their ratio, and the loader against training."""
    def row(name: str, k: float, o: float | None = None, fmt: str = ".1f") -> None:
        print(f"  {name:<40} {k:>9{fmt}} " + (f"{o:>9{fmt}} {k / o:>19.3f}" if o is not None else ""))

    print(f"\nmedians over rounds; steady state = steps {args.skip_steps}..{args.steps} of a 1-process run "
          f"(1/N of them with N processes); samples/s of all processes together")
    print(f"  {'':<40} {'kubeclip':>9} {'open_clip':>9} {'kubeclip/open_clip':>19}")
    for nproc, runs in results.items():
        k, o = runs["kubeclip"], runs["open_clip"]
        print(f"{nproc} process{'es' if nproc > 1 else ''}, {len(k)} rounds")
        row("train samples/s (median interval)", *(statistics.median(r.rate for r in x) for x in (k, o)))
        paired = [a.rate / b.rate for a, b in zip(k, o)]
        print(f"  {'per-round ratios':<40} {' '.join(f'{x:.3f}' for x in paired):>39}"
              f"  (median {statistics.median(paired):.3f})")
        row("peak memory MiB (summed PSS)", *(statistics.median(r.peak_mib for r in x) for x in (k, o)))
        row("wall s per run (start to exit)", *(statistics.median(r.wall for r in x) for x in (k, o)))
        row("data wait, share of a step", statistics.median(r.data_wait for r in k), fmt=".3f")
    if loaders["kubeclip"]:
        k, o = (statistics.median(loaders[who]) for who in ("kubeclip", "open_clip"))
        print(f"loader alone, 1 process, {args.workers} workers, {len(loaders['kubeclip'])} rounds")
        row("samples/s", k, o)
        for nproc, runs in results.items():
            consumed = statistics.median(r.rate for r in runs["kubeclip"]) / nproc
            row(f"/ kubeclip training use per process, {nproc}p", k / consumed, fmt=".2f")
        print("  (above 1: one process's loader alone outruns what its training consumes)")


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="train-vs-open-clip-"))
    (work / "open_clip_wrapper.py").write_text(WRAPPER)
    data_dir = Path(args.data).resolve() if args.data else work / "data"
    if not args.data:
        subprocess.run([sys.executable, "-m", "kubeclip.components.cli", "prepare", "synthetic", "--out", str(data_dir),
                        "--samples", str(args.samples), "--image-size", "64", "--shard-size", "500"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    shards = shard_urls(str(data_dir), "train")
    ours_params = sum(p.numel() for p in model.build(args.model).parameters())
    print(f"open_clip {open_clip.__version__}, {psutil.cpu_count()} CPUs; {len(shards)} shards in {data_dir}; "
          f"model {args.model} ({ours_params:,} parameters), batch {args.batch_size} per process, "
          f"{args.workers} loader workers per process, {args.steps} steps (1 process)")

    results: dict[int, dict[str, list[Run]]] = {}
    loaders: dict[str, list[float]] = {"kubeclip": [], "open_clip": []}
    order = ["kubeclip", "open_clip"]
    for nproc, rounds in args.runs:
        results[nproc] = runs = {"kubeclip": [], "open_clip": []}
        for r in range(rounds):
            for who in order:
                tag = f"{nproc}p-{r}"
                if who == "kubeclip":
                    run = run_kubeclip(args, data_dir, work, nproc, tag)
                else:
                    run, params = run_open_clip(args, data_dir, work, nproc, tag)
                    if params != ours_params:
                        raise SystemExit(f"open_clip built a model of {params:,} parameters, kubeclip one of "
                                         f"{ours_params:,}: not the same model")
                runs[who].append(run)
                print(f"  {nproc} proc, round {r + 1}/{rounds}, {who:<9}: {run.rate:6.1f} samples/s, "
                      f"{run.samples} samples, {run.wall:5.1f} s wall, loss {run.losses[0]:.3f} -> "
                      f"{run.losses[1]:.3f}, peak {run.peak_mib:4.0f} MiB", flush=True)
            if nproc == 1:
                for who in order:
                    loaders[who].append(loader_rate(who, args, data_dir))
                    print(f"  loader alone, round {r + 1}/{rounds}, {who:<9}: {loaders[who][-1]:6.1f} samples/s",
                          flush=True)
            order.reverse()
        if any(k.samples != o.samples for k, o in zip(runs["kubeclip"], runs["open_clip"])):
            raise SystemExit("the two trainers trained different numbers of samples")

    report(args, results, loaders)
    if args.keep:
        print(f"logs and outputs kept in {work}")
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
