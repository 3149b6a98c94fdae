"""The train step: contrastive pre-training of CLIP, one process per device, under torchrun or alone.

The loop, in nanoGPT's order: set the learning rate; take k micro-batches; forward, loss over the
global batch, backward; skip the step if the loss is not finite; clip, step, clamp the logit scale;
log; checkpoint. Everything a resumed run needs (weights, optimiser, scaler, step, data position)
is in the checkpoint, and the data stream is a pure function of its position, so a run killed and
resumed ends with the same weights as one never stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import model
from components.datasets import shard_urls
from components.lineage import file_sha256, write_lineage
from components.options import option
from components.train import data
from components.train.checkpoints import Checkpoints, load_state
from components.train.metrics import TrainMetrics
from model.losses import ClipLoss, SigLipLoss

MAX_LOGIT_SCALE = math.log(100)


@dataclass(kw_only=True)
class TrainOptions:
    data: str = option(help="prepare output (folder or fsspec URL) whose manifest.json lists the shards")
    model: str = option("tiny-vit", "a built-in config name (see model.available_models()) or a JSON config file")
    out: str = option(help="run folder: checkpoints/, metrics.jsonl, lineage.json")
    steps: int = option(1000, "total optimiser steps the run trains to (also when resuming)")
    batch_size: int = option(64, "pairs per process per micro-batch; the contrastive batch is "
                                  "batch x processes x accum-steps")
    accum_steps: int = option(1, "micro-batches per step; features are cached so the contrastive batch grows")
    lr: float = option(5e-4, "peak learning rate")
    warmup: int = option(100, "linear warmup steps before the cosine decay")
    weight_decay: float = option(0.2, "AdamW weight decay (never on gains, biases, embeddings, logit_scale)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.98, "AdamW beta2")
    eps: float = option(1e-6, "AdamW epsilon")
    grad_clip: float = option(1.0, "clip the gradient norm to this; 0 turns clipping off")
    loss: str = option("clip", "clip (softmax over the batch) or siglip (pairwise sigmoid)")
    precision: str = option("auto", "auto (bf16 on GPUs, fp32 on CPUs), fp32, bf16 or fp16 (with a loss scaler)")
    grad_checkpointing: bool = option(False, "recompute transformer blocks in backward to save memory")
    compile: bool = option(False, "torch.compile the model")
    split: str = option("train", "the data split to train on")
    workers: int = option(2, "data loader processes per training process")
    shuffle_buffer: int = option(1000, "samples held for shuffling in each loader process")
    resample: bool = option(False, "draw shards with replacement instead of in epochs")
    seed: int = option(0, "seeds initialisation and the data order")
    checkpoint_every: int = option(500, "steps between checkpoints; one is always written at the end")
    keep_last: int = option(3, "committed checkpoints to keep")
    resume: str | None = option(None, "'latest' continues from --out's newest checkpoint (or starts if there is "
                                      "none); a checkpoint path continues from that one")
    log_every: int = option(10, "steps between metrics.jsonl lines; the final step is always logged")
    max_nonfinite: int = option(5, "stop after this many steps in a row with a non-finite loss")
    metrics_port: int | None = option(None, "serve Prometheus metrics on this port (rank 0)")
    pushgateway: str | None = option(None, "push metrics to this Prometheus Pushgateway (host:port)")


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:
    """NCCL on GPUs, gloo on CPUs, from torchrun's environment; a single process without it."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if world_size == 1:
        return Distributed(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # After a restart, torchrun's store still holds the dead processes' addresses: a fresh key prefix
    # per attempt keeps the new process group from waiting on them.
    store, rank, world_size = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.PrefixStore(f"attempt-{attempt}", store),
                            rank=rank, world_size=world_size)
    return Distributed(rank, local_rank, world_size, device)


def lr_at(step: int, opts: TrainOptions) -> float:
    """Linear warmup to `lr`, then cosine decay to zero at `steps` (steps are 1-based)."""
    if step <= opts.warmup:
        return opts.lr * step / max(1, opts.warmup)
    progress = (step - opts.warmup) / max(1, opts.steps - opts.warmup)
    return opts.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(clip: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay only on matrices: never on gains, biases, embeddings or the logit scale."""
    no_decay = ("token_embedding.weight", "positional_embedding", "class_embedding", "logit_scale")
    decay, rest = [], []
    for name, param in clip.named_parameters():
        if param.requires_grad:
            (rest if param.ndim < 2 or name.endswith(no_decay) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise SystemExit(f"--precision must be auto, fp32, bf16 or fp16, not {precision!r}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def train_step(clip, loss_fn, batches, dtype, device, no_sync, shared: list[torch.nn.Parameter]) -> torch.Tensor:
    """Forward and backward over k micro-batches with the contrastive batch spanning all of them.

    With k > 1, features of every micro-batch are first computed without gradients; then each
    micro-batch is recomputed with gradients and its loss taken against the cached others (GradCache).
    Summed, the k backward passes give exactly the gradient of one batch of k x B: each feature
    receives its gradient once, so the loss is not divided by k. The `shared` parameters (logit
    scale, loss bias) take part in every one of the k losses, whose values are all the same, so
    their summed gradient is k times the true one and is divided by k.
    """
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    if len(batches) == 1:
        images, ids = batches[0]
        with autocast:
            loss = loss_fn(*clip(images, ids))
        loss.backward()
        return loss.detach()
    with torch.no_grad(), autocast:
        cached = [clip(images, ids) for images, ids in batches]
    for j, (images, ids) in enumerate(batches):
        sync = contextlib.nullcontext() if j == len(batches) - 1 else no_sync()
        with sync, autocast:
            fresh = clip(images, ids)
            image_features = torch.cat([fresh[0] if i == j else c[0] for i, c in enumerate(cached)])
            text_features = torch.cat([fresh[1] if i == j else c[1] for i, c in enumerate(cached)])
            loss = loss_fn(image_features, text_features, fresh[2])
        loss.backward()
    for param in shared:
        param.grad /= len(batches)
    return loss.detach()


def train(opts: TrainOptions) -> dict:
    """Train to `opts.steps`; returns the final metrics record."""
    started = time.time()
    env = init_distributed()
    torch.manual_seed(opts.seed)
    clip = model.build(opts.model).to(env.device)
    clip.set_grad_checkpointing(opts.grad_checkpointing)
    loss_fn = (SigLipLoss if opts.loss == "siglip" else ClipLoss)(env.rank, env.world_size).to(env.device)
    if opts.loss == "siglip":
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(10))  # SigLIP starts its temperature at 10
    optimizer = torch.optim.AdamW(param_groups(clip, opts.weight_decay) + [{"params": list(loss_fn.parameters()),
                                                                              "weight_decay": 0.0}],
                                  lr=opts.lr, betas=(opts.beta1, opts.beta2), eps=opts.eps)
    dtype = autocast_dtype(opts.precision, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    checkpoints = Checkpoints(opts.out)

    start, batches_done, skipped_total = 0, 0, 0
    resume_from = checkpoints.latest() if opts.resume == "latest" else opts.resume
    if resume_from:
        weights, state = load_state(resume_from)
        clip.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        loss_fn.load_state_dict(state["loss"])
        start, batches_done, skipped_total = state["step"], state["batches"], state["skipped"]
        torch.set_rng_state(state["rng"])

    net = clip
    if env.world_size > 1:
        net = DistributedDataParallel(clip, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if opts.compile:
        net = torch.compile(net)
    no_sync = net.no_sync if isinstance(net, DistributedDataParallel) else contextlib.nullcontext
    shared = [clip.logit_scale, *loss_fn.parameters()]

    stream = data.Stream(shard_urls(opts.data, opts.split), opts.batch_size, clip.image_size,
                         clip.context_length, opts.seed, opts.shuffle_buffer, opts.resample, env.rank, env.world_size)
    batches = iter(data.loader(stream, opts.workers, skip_batches=batches_done))
    metrics = TrainMetrics(opts.out, opts.metrics_port, opts.pushgateway, start) if env.main else None
    global_batch = opts.batch_size * env.world_size * opts.accum_steps
    nonfinite, record = 0, {}
    progress = tqdm(total=opts.steps, initial=start, unit="step", disable=not env.main or None, mininterval=1)
    net.train()
    for step in range(start + 1, opts.steps + 1):
        lr = lr_at(step, opts)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_start = time.time()
        micro = [next(batches) for _ in range(opts.accum_steps)]
        micro = [(images.to(env.device, non_blocking=True), ids.to(env.device, non_blocking=True)) for images, ids in micro]
        data_wait = time.time() - step_start
        batches_done += opts.accum_steps

        loss = train_step(net, loss_fn, micro, dtype, env.device, no_sync, shared)
        finite = torch.isfinite(loss).float()
        if env.world_size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            optimizer.zero_grad(set_to_none=True)
            skipped_total += 1
            nonfinite += 1
            if metrics:
                metrics.skipped.inc()
            if nonfinite >= opts.max_nonfinite:
                raise RuntimeError(f"the loss was not finite for {nonfinite} steps in a row (up to step {step}); "
                                   "lower --lr, use --precision bf16 instead of fp16, or check the data")
        else:
            nonfinite = 0
            scaler.unscale_(optimizer)
            if opts.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(clip.parameters(), opts.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

        if env.main:
            elapsed = time.time() - step_start
            metrics.step_done(step, data_wait)
            progress.update(1)
            if step % opts.log_every == 0 or step == opts.steps:
                record = {"step": step, "loss": loss.item(), "lr": lr, "logit_scale": clip.logit_scale.exp().item(),
                          "samples_per_second": global_batch / elapsed, "data_wait_seconds": data_wait,
                          "time": time.time()}
                metrics.log(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}")
        if step % opts.checkpoint_every == 0 or step == opts.steps:
            state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "loss": loss_fn.state_dict(),
                     "step": step, "batches": batches_done, "skipped": skipped_total, "rng": torch.get_rng_state()}
            if env.main:
                checkpoints.save(clip, state, step, opts.keep_last)
                metrics.checkpoint_done()
            if env.world_size > 1:
                dist.barrier()
    progress.close()
    if env.main:
        manifest_sha = file_sha256(f"{opts.data.rstrip('/')}/manifest.json")
        write_lineage(opts.out, "train", {"data": {"url": opts.data, "manifest_sha256": manifest_sha}},
                      {**asdict(opts), "world_size": env.world_size}, started)
    if env.world_size > 1:
        dist.destroy_process_group()
    return record
