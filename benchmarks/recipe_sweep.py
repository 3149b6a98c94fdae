"""The sweep that chose kubeclip's small-data recipe (issue 9): short budgeted runs from scratch on Flickr8k
train, one flag set at a time, each evaluated as recipe_vs_open_clip.py evaluates (Flickr8k 1k-test retrieval,
CIFAR-10 zero-shot). Runs go one after another on this machine; a line of JSON per run.

    python benchmarks/recipe_sweep.py --work runs/recipe-vs-open-clip --minutes 3 \\
        --run base= --run b128="--batch-size 128" --run lr1e-3="--lr 1e-3"

The flags are added to `kubeclip train --model tiny-vit --time-budget M --seed 0` at kubeclip's defaults, so
`base` is whatever the defaults are when it runs. The data is prepared in --work as recipe_vs_open_clip.py
prepares it (and reused from there).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import recipe_vs_open_clip as recipe


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="work folder (prepared data is reused)")
    p.add_argument("--minutes", type=float, default=3, help="wall-clock budget of each run (default: %(default)s)")
    p.add_argument("--run", action="append", required=True, metavar="NAME=FLAGS",
                   help="a run: its name and the kubeclip train flags it adds (repeat)")
    args = p.parse_args()
    args.runs = {}
    for run in args.run:
        name, sep, flags = run.partition("=")
        if not sep or not name:
            p.error(f"--run {run!r}: expected NAME=FLAGS, e.g. b128='--batch-size 128'")
        args.runs[name] = shlex.split(flags)
    return args


def main() -> None:
    args = parse_args()
    sys.argv = [sys.argv[0], "--work", str(args.work), "--contestants", "scratch"]
    defaults = recipe.parse_args()  # the comparison's data paths and options
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    data, cifar, _ = recipe.prepare(defaults, work)
    for name, flags in args.runs.items():
        out, started = work / "sweep" / name, time.time()
        recipe.sh([*recipe.KUBECLIP, "train", "--data", data, "--out", out, "--model", defaults.model,
                   "--time-budget", f"{args.minutes * 60:g}s", "--workers", defaults.workers, "--seed", 0, *flags],
                  work / "logs" / f"sweep-{name}.log")
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        scores = recipe.evaluate(out, data, cifar, work, f"sweep-{name}")
        print(json.dumps({"name": name, "flags": flags, "steps": last["step"], "loss": round(last["loss"], 3),
                          **{k: round(100 * v, 1) for k, v in scores.items()}, "secs": round(time.time() - started)}),
              flush=True)


if __name__ == "__main__":
    main()
