"""Training-step throughput on the CPU: kubeclip's CLIP as the trainer runs it (a ResNet image tower in
channels-last memory) vs open_clip's CLIP, same config, same weights; or, with `--baseline contiguous`, vs
kubeclip's own CLIP left in contiguous memory (what channels-last gains); or, with `--baseline no-slip`,
kubeclip's step with SLIP's views and loss (the recipe's default for a ViT image tower) vs the same CLIP
without them (what SLIP costs); or, with `--baseline foreach`, kubeclip's step as the trainer runs it (fused
AdamW, SLIP for a ViT) vs the same step with torch's default foreach AdamW (what the fused optimizer gains); or,
with `--baseline no-text-ssl`, kubeclip's step with the captions' contrast (64 second captions in the batch, as
the trainer's --text-ssl-captions 64 gives) vs the same step without them (what it costs).

One training step is forward, the symmetric CLIP cross-entropy loss, backward and an AdamW step.
Both models are built from the same open_clip-format config dict, open_clip's gets our initial
weights, and both see the same fixed inputs (random images, real tokenized captions). Each round
runs a few untimed warm steps of each model, then timed steps of the two in turn (ours, open_clip,
open_clip, ours, ...), so that noise on a shared machine hits both alike. The report is the median
samples/s over rounds and the ratio ours / open_clip (goal: >= 1.0), with the per-round ratios.

    python benchmarks/train_step_throughput.py                # the default comparison, a few minutes on 2 cores
    python benchmarks/train_step_throughput.py --profile      # where the time goes, op by op
    python benchmarks/train_step_throughput.py --models tiny-vit:64 --rounds 9
    python benchmarks/train_step_throughput.py --models tiny-rn:128 --baseline contiguous   # channels-last's gain
    python benchmarks/train_step_throughput.py --models tiny-vit:128 --baseline no-slip     # SLIP's cost
    python benchmarks/train_step_throughput.py --models tiny-vit:128 --baseline foreach     # fused AdamW's gain
    python benchmarks/train_step_throughput.py --models tiny-vit:128 --baseline no-text-ssl # the captions' cost

Nothing is downloaded: both models start from random weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from kubeclip import model
from kubeclip.components.train.slip import Slip, ssl_loss
from kubeclip.model.transformer import VisionTransformer

PHASES = ("forward + loss", "backward", "optimizer")
CAPTIONS = [
    "a dog",
    "a photo of a cat sitting on a red sofa",
    "two people riding bicycles along a river at sunset, with mountains in the distance",
    "an aerial view of a crowded harbour full of small fishing boats, cranes and stacked shipping "
    "containers, taken on a grey winter morning just after a heavy snowfall",
    "close-up of a bowl of ramen",
    "a diagram explaining how a transformer encoder processes a sequence of image patches",
    "graffiti on a brick wall",
    "a child in a yellow raincoat jumping into a puddle on a quiet suburban street while her dog watches",
]


def build_pair(name: str, baseline: str) -> dict[str, torch.nn.Module]:
    """Our CLIP as the trainer runs it (channels-last ResNet towers) and the baseline, holding the same initial
    weights: open_clip's CLIP from the same config dict, ours in contiguous memory, ours without SLIP (then
    ours trains with it, weighted 1, on 64 images of the batch as the trainer does), or ours again (SLIP on both
    for a ViT; only the optimizers, or with no-text-ssl the inputs, differ)."""
    ours = model.build(name)
    if baseline == "open_clip":
        cfg = model.get_config(name).to_dict()
        theirs = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                                      quick_gelu=cfg["quick_gelu"])
    else:
        theirs = model.build(name)
    theirs.load_state_dict(ours.state_dict())
    if baseline == "no-slip":
        return {"ours": Slip(ours, 1.0, 64).train(), baseline: theirs.train()}
    if baseline in ("foreach", "no-text-ssl"):
        vit = isinstance(ours.visual, VisionTransformer)
        pair = [n.channels_last() for n in (ours, theirs)]
        if vit or baseline == "no-text-ssl":  # the trainer's wrapper: SLIP's views for a ViT, the captions' loss
            pair = [Slip(n, 1.0 if vit else 0.0, 64) for n in pair]
        return {"ours": pair[0].train(), baseline: pair[1].train()}
    return {"ours": ours.channels_last().train(), baseline: theirs.train()}


def make_inputs(name: str, batch: int, baseline: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fixed inputs of each model: seeded random images at the config's size, captions of varied length; with the
    no-text-ssl baseline, ours gets a second caption (the next one) for the first 64 images."""
    size = model.get_config(name).vision.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch)]
    ids = model.tokenize(texts)
    seconds = model.tokenize([CAPTIONS[(i + 1) % len(CAPTIONS)] for i in range(min(64, batch))])
    ours = torch.cat([ids, seconds]) if baseline == "no-text-ssl" else ids
    return {"ours": (images, ours), baseline: (images, ids)}


def make_optimizer(key: str, baseline: str, net: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW as each trainer builds it: fused for ours and for the baselines that ablate something else; torch's
    default (foreach) for open_clip's trainer and for the foreach baseline."""
    fused = key == "ours" or baseline in ("contiguous", "no-slip", "no-text-ssl")
    return torch.optim.AdamW(net.parameters(), lr=1e-4, fused=fused)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE of CLIP: matching image/text pairs lie on the diagonal."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor, ids: torch.Tensor) -> None:
    """One step; the record_function labels let the profiler split its time into PHASES."""
    with record_function("phase: forward + loss"):
        out = net(images, ids)  # ours: CLIPOutput (or SlipOutput), open_clip: a plain tuple; (image, text, scale)
        loss = clip_loss(out[0], out[1], out[2]) + ssl_loss(out)
    with record_function("phase: backward"):
        opt.zero_grad(set_to_none=True)
        loss.backward()
    with record_function("phase: optimizer"):
        opt.step()


def timed_round(nets, opts, inputs, args) -> dict[str, float]:
    """Samples/s of each model over one round. After `warmup` untimed steps each (allocator, caches, lazy
    state), the models take timed steps in turn, ABBA order, so a change in machine load hits both alike;
    steps go on until each model has `steps` of them and `min_seconds` of timed work."""
    for key in nets:
        for _ in range(args.warmup):
            train_step(nets[key], opts[key], *inputs[key])
    spent, steps = dict.fromkeys(nets, 0.0), 0
    while steps < args.steps or min(spent.values()) < args.min_seconds:
        for key in (list(nets) if steps % 2 == 0 else list(nets)[::-1]):
            start = time.perf_counter()
            train_step(nets[key], opts[key], *inputs[key])
            spent[key] += time.perf_counter() - start
        steps += 1
    return {key: steps * len(inputs[key][0]) / seconds for key, seconds in spent.items()}


def benchmark(name: str, batch: int, args) -> dict[str, list[float]]:
    """Samples/s of both models, one value per round."""
    nets = build_pair(name, args.baseline)
    opts = {k: make_optimizer(k, args.baseline, n) for k, n in nets.items()}
    inputs = make_inputs(name, batch, args.baseline)
    images, ids = inputs[args.baseline]
    with torch.no_grad():  # same weights and inputs must give the same loss, or the comparison is void
        first = {k: clip_loss(*n(images, ids)[:3]).item() for k, n in nets.items()}
    print(f"{name} (batch {batch}): initial loss " + ", ".join(f"{k} {loss:.6f}" for k, loss in first.items()))
    rates = {k: [] for k in nets}
    for r in range(args.rounds):
        for k, rate in timed_round(nets, opts, inputs, args).items():
            rates[k].append(rate)
        print(f"  round {r + 1}/{args.rounds}: " + "  ".join(f"{k} {v[-1]:7.2f}" for k, v in rates.items())
              + " samples/s", flush=True)
    return rates


def profile_model(name: str, batch: int, args) -> None:
    """The forward/backward/optimizer split and the top ops by self CPU time, for each model."""
    nets = build_pair(name, args.baseline)
    inputs = make_inputs(name, batch, args.baseline)
    for key, net in nets.items():
        opt = make_optimizer(key, args.baseline, net)
        for _ in range(args.warmup):
            train_step(net, opt, *inputs[key])
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile_steps):
                train_step(net, opt, *inputs[key])
        wall = (time.perf_counter() - start) / args.profile_steps
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        phases = {e.key: e.cpu_time_total for e in events if e.key.startswith("phase: ")}
        print(f"\n{name} (batch {batch}) {key}: {1e3 * wall:.1f} ms/step under the profiler; "
              + ", ".join(f"{p} {100 * phases[f'phase: {p}'] / total:.0f}%" for p in PHASES))
        print(f"  {'op (share of self CPU time)':<60} {'ms/step':>8} {'share':>6} {'calls/step':>10}")
        ops = sorted((e for e in events if not e.key.startswith("phase: ")), key=lambda e: -e.self_cpu_time_total)
        for e in ops[: args.top]:
            print(f"  {e.key[:60]:<60} {e.self_cpu_time_total / 1e3 / args.profile_steps:8.2f} "
                  f"{100 * e.self_cpu_time_total / total:5.1f}% {e.count / args.profile_steps:10.0f}")


def model_spec(text: str) -> tuple[str, int]:
    """NAME:BATCH -> (NAME, BATCH); the name may itself be a path."""
    name, _, batch = text.rpartition(":")
    if not name or not batch.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME:BATCH, e.g. tiny-vit:32, got {text!r}")
    return name, int(batch)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", type=model_spec, default=[("tiny-vit", 32), ("ViT-B-32", 8)],
                   metavar="NAME:BATCH", help="built-in model names (or config JSON paths) with their batch sizes "
                   "(default: tiny-vit:32 ViT-B-32:8)")
    p.add_argument("--baseline", choices=["open_clip", "contiguous", "no-slip", "foreach", "no-text-ssl"],
                   default="open_clip",
                   help="what ours is measured against: open_clip's CLIP, ours with its ResNet image tower in "
                        "contiguous memory, not channels-last as the trainer runs it, ours without SLIP "
                        "(then ours trains with it), ours with torch's default foreach AdamW, not the "
                        "trainer's fused one, or ours without the captions' contrast (then ours trains with it) "
                        "(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds per model pair; the median over rounds is reported (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps per model at the start of each round (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2, help="least timed steps per model per round (default: %(default)s)")
    p.add_argument("--min-seconds", type=float, default=3.0,
                   help="timed steps go on until each model has this much timed work (default: %(default)s)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch intra-op threads, the same for both models (default: %(default)s, torch's own choice)")
    p.add_argument("--profile", action="store_true",
                   help="profile instead of timing: phase split and top ops by self CPU time, per model")
    p.add_argument("--profile-steps", type=int, default=3, help="steps recorded by --profile (default: %(default)s)")
    p.add_argument("--top", type=int, default=15, help="ops listed per model by --profile (default: %(default)s)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, {torch.get_num_threads()} threads")
    if args.profile:
        for name, batch in args.models:
            profile_model(name, batch, args)
        return
    results = {(name, batch): benchmark(name, batch, args) for name, batch in args.models}
    print(f"\nmedian training-step throughput (samples/s), {torch.get_num_threads()} threads, {args.rounds} rounds; "
          f"each: {args.warmup} warm step(s) per model, then interleaved timed steps, "
          f">= {args.steps} and >= {args.min_seconds:g} s per model")
    base = args.baseline
    print(f"{'model':<12} {'batch':>5} {'ours':>12} {base:>12} {'ours/' + base:>17}  "
          "per-round ratio: median (min..max)")
    for (name, batch), rates in results.items():
        ours, theirs = statistics.median(rates["ours"]), statistics.median(rates[base])
        paired = [a / b for a, b in zip(rates["ours"], rates[base])]  # same round: same machine load
        print(f"{name:<12} {batch:>5} {ours:>10.2f}/s {theirs:>10.2f}/s {ours / theirs:>17.3f}  "
              f"{statistics.median(paired):.3f} ({min(paired):.2f}..{max(paired):.2f})")


if __name__ == "__main__":
    main()
