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
from dataclasses import asdict, dataclass, replace
from itertools import islice

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from kubeclip import model
from kubeclip.components.datasets import captions, shard_urls, split_samples
from kubeclip.components.lineage import file_sha256, write_lineage
from kubeclip.components.options import option
from kubeclip.components.train import data
from kubeclip.components.storage import local_copy
from kubeclip.components.train.checkpoints import Checkpoints, load_state, local_weights
from kubeclip.components.train.metrics import TrainMetrics
from kubeclip.components.train.slip import Slip, ssl_loss
from kubeclip.components.train.text_cache import TextFeatureCache
from kubeclip.model import hf_text
from kubeclip.model.losses import ClipLoss, SigLipLoss
from kubeclip.model.transformer import VisionTransformer
from kubeclip.model.tokenizer import ClipTokenizer, fit_merges

MAX_LOGIT_SCALE = math.log(100)
FIT_CAPTIONS = 100_000  # --fit-tokenizer learns from this many captions at most


@dataclass(kw_only=True)
class TrainOptions:
    data: str = option(help="prepare output (folder or fsspec URL) whose manifest.json lists the shards")
    model: str = option("tiny-vit", "a built-in config name (see model.available_models()) or a JSON config file; "
                                    "on a few CPU cores tiny-rn retrieves better, tiny-vit with a locked pretrained "
                                    "text tower classifies better (measured: components/train/README.md)")
    out: str = option(help="run folder: checkpoints/, metrics.jsonl, lineage.json")
    steps: int = option(1000, "total optimiser steps the run trains to (also when resuming)")
    batch_size: int = option(128, "pairs per process per micro-batch; the contrastive batch is "
                                   "batch x processes x accum-steps (128: the small-data recipe, see README)")
    accum_steps: int = option(1, "micro-batches per step; features are cached so the contrastive batch grows")
    lr: float = option(5e-4, "peak learning rate")
    warmup: int = option(100, "linear warmup steps before the cosine decay")
    weight_decay: float = option(0.2, "AdamW weight decay (never on gains, biases, embeddings, logit_scale)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.98, "AdamW beta2")
    eps: float = option(1e-6, "AdamW epsilon")
    grad_clip: float = option(1.0, "clip the gradient norm to this; 0 turns clipping off")
    loss: str = option("clip", "clip (softmax over the batch) or siglip (pairwise sigmoid)")
    label_smoothing: float = option(0.0, "clip loss: this share of each target spread over the whole batch, for "
                                         "captions that fit other photos in it too")
    precision: str = option("auto", "auto (bf16 on GPUs, fp32 on CPUs), fp32, bf16 or fp16 (with a loss scaler)")
    grad_checkpointing: bool = option(False, "recompute transformer blocks in backward to save memory")
    compile: bool = option(False, "torch.compile the model")
    crop_scale: float = option(0.5, "augmentation: a training image is a random crop covering this share of it "
                                    "or more (area), resized to the model's size (CLIP's own: 0.9)")
    hflip: bool = option(False, "augmentation: mirror half the training images, swapping 'left' and 'right' in "
                                "their captions so each pair stays true (off in the recipe: measured no gain, README)")
    word_dropout: float = option(0.1, "augmentation: drop each caption word with this probability, keeping one "
                                      "at least (not with a locked text tower: it learns nothing from it)")
    ssl_scale: float = option(1.0, "SLIP: add SimCLR's loss on two augmented views of each image, weighted by this "
                                   "(0: off); only where both towers train and the image tower is a ViT (measured: "
                                   "README)")
    ssl_images: int = option(64, "SLIP: the images of each micro-batch that get two views (each view costs an "
                                 "image-tower pass)")
    ssl_temperature: float = option(0.1, "SLIP: SimCLR's temperature (SLIP's 0.1; 0.2 measured within a seed's "
                                         "noise of it, README)")
    text_ssl_captions: int = option(64, "text SSL: the samples of each micro-batch that also get another caption "
                                        "of their photo; each of the two must pick out the other among the "
                                        "batch's captions (SimCLR's loss at --ssl-temperature; 0: off; not with "
                                        "a locked text tower; measured: README)")
    text_ssl_scale: float = option(1.0, "text SSL: the weight of the captions' loss")
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
    text_tower: str | None = option(None, "hf:PATH: a pretrained BERT-style encoder from a local Hugging Face model "
                                          "folder (config.json, model.safetensors or pytorch_model.bin, "
                                          "tokenizer.json) plus a learned projection; its tokenizer is used and saved")
    text_pooling: str = option("mean", "with --text-tower: mean (over real tokens) or cls pooling")
    fit_tokenizer: int = option(0, "learn this many BPE merges from the training captions (the first 100,000) in "
                                   "place of CLIP's 48,894: a vocabulary of 514 + N tokens that the captions train "
                                   "throughout, saved with the checkpoint (0: CLIP's; measured in the README)")
    image_tower_from: str | None = option(None, "take the image tower (architecture, weights, embed_dim and "
                                                "quick_gelu) from an OpenAI, open_clip or kubeclip checkpoint")
    lock_text: bool = option(False, "freeze the text tower's pretrained weights (a Hugging Face tower's "
                                    "projection still trains); fully locked, its features are cached per caption")
    lock_image: bool = option(False, "freeze the image tower, projection included (LiT)")
    unlock_last: int = option(0, "leave the last N blocks of each locked tower, and what follows them, trainable")
    cache_text_features: bool = option(True, "with a fully locked text tower, compute each caption's features once "
                                             "and skip the tower afterwards")
    time_budget: str | None = option(None, "train for this long (e.g. 90s, 20m, 1.5h): the first steps are timed, "
                                           "then --steps and --warmup are set so the cosine schedule ends at the "
                                           "budget, and the run stops there")
    warmup_fraction: float = option(0.05, "with --time-budget: warmup steps as a fraction of the steps that fit")


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


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to `lr` at step `warmup`, then cosine decay to zero at `steps` (steps are 1-based).

    A time-budgeted run refits the schedule as it measures its pace; a refit at step `start` continues the
    curve from where it stands: the warmup ramps on from `start_lr`, or the cosine goes on from its
    progress `start_progress`, stretched or squeezed to end at the new `steps`.
    """
    lr: float
    warmup: int
    steps: int
    start: int = 0
    start_lr: float = 0.0
    start_progress: float = 0.0

    def progress(self, step: int) -> float:
        """How far the cosine has gone at `step`: 0 during warmup, 1 at `steps`."""
        if step <= self.warmup:
            return 0.0
        begin = max(self.start, self.warmup)
        return min(1.0, self.start_progress + (1 - self.start_progress) * (step - begin) / max(1, self.steps - begin))

    def at(self, step: int) -> float:
        if step <= self.warmup:
            return self.start_lr + (self.lr - self.start_lr) * (step - self.start) / max(1, self.warmup - self.start)
        return self.lr * 0.5 * (1 + math.cos(math.pi * self.progress(step)))

    def refit(self, step: int, steps: int, warmup: int) -> Schedule:
        """The rest of this curve, ending at `steps` (and, if still warming up, reaching `lr` at `warmup`)."""
        if step < self.warmup:
            return Schedule(self.lr, max(step, warmup), steps, start=step, start_lr=self.at(step))
        return Schedule(self.lr, self.warmup, steps, start=step, start_progress=self.progress(step))


OPEN = 1 << 40  # the length of a budgeted run's schedule before its pace is known
REFIT_EVERY = 0.1  # after warmup, the schedule is refitted from the pace of each such share of the budget


def parse_duration(text: str) -> float:
    """Seconds in '90s', '20m', '1.5h' (a bare number is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise SystemExit(f"--time-budget must be a positive duration such as 90s, 20m or 1.5h, not {text!r}")
    return seconds


class TimeBudget:
    """Sizes the schedule so that it ends when `seconds` are up, counted from `started` (the start of `train`,
    moved back by the time a resumed run had already spent).

    The pace (wall seconds per step, checkpoints and logging included) is measured from the end of the first
    step, which pays for start-up. While the run warms up, the schedule is refitted after every step (from
    the third timed one) from the pace of the latest half of the steps timed: costs of the first steps that
    linger, such as kernel autotuning on a GPU, drop out of it, so warmup comes out at `warmup_fraction` of
    the steps that fit, not of an estimate that the slow first steps made short. After warmup, the pace since
    the last fit is measured again after every 10% of the budget and the schedule refitted, which follows a
    pace that changes (a text-feature cache warming up, a busy machine). Whatever the estimates, the run
    stops at the budget. Rank 0 decides for every process.
    """

    def __init__(self, seconds: float, started: float, warmup_fraction: float, device: torch.device, world_size: int):
        self.seconds, self.started, self.warmup_fraction = seconds, started, warmup_fraction
        self.device, self.world_size = device, world_size
        self.marks: list[tuple[int, float]] = []  # (step, time) at the end of the steps the pace is measured over
        self.next_fit = 0.0

    def after_step(self, step: int, schedule: Schedule) -> tuple[Schedule | None, bool]:
        """`schedule` refitted, or None when it is not time to; and whether the budget is spent."""
        now = time.time()
        decision = torch.zeros(3, dtype=torch.float64, device=self.device)  # steps, warmup, stop
        since = None  # the (step, time) the pace is measured from, when it is time to fit
        if step < schedule.warmup:  # warming up, or not fitted yet (an open schedule warms up forever)
            self.marks.append((step, now))
            if len(self.marks) >= 4:
                since = self.marks[min(len(self.marks) // 2, len(self.marks) - 4)]
        elif not self.marks:  # resumed past warmup: timed from the end of this first step
            self.marks = [(step, now)]
        elif now >= self.next_fit and step - self.marks[-1][0] >= 3:
            since, self.marks = self.marks[-1], [(step, now)]
        if since is not None:
            pace = (now - since[1]) / (step - since[0])
            steps = step + max(1, int((self.seconds - (now - self.started)) / pace))
            decision[0], decision[1] = steps, max(1, math.ceil(self.warmup_fraction * steps))
            self.next_fit = now + REFIT_EVERY * self.seconds
        decision[2] = float(now - self.started >= self.seconds)
        if self.world_size > 1:
            dist.broadcast(decision, 0)
        steps, warmup, stop = (int(v) for v in decision.tolist())
        return (schedule.refit(step, steps, warmup) if steps else None), bool(stop)


def build_model(opts: TrainOptions) -> model.CLIP:
    """The CLIP to train: `--model`, with a pretrained Hugging Face text tower and an image tower taken from a
    checkpoint when asked, and the locked towers frozen. Either source may be a URL: it is fetched first."""
    with contextlib.ExitStack() as stack:
        text_path = source = None
        if opts.text_tower:
            text_path = stack.enter_context(local_copy(hf_text.parse_text_tower(opts.text_tower)))
        if opts.image_tower_from:
            source = model.load(stack.enter_context(local_weights(opts.image_tower_from))[1])
        return _build_model(opts, text_path, source)


def _build_model(opts: TrainOptions, text_path: str | None, source: model.CLIP | None) -> model.CLIP:
    cfg = model.get_config(opts.model)
    if source is not None:
        cfg = replace(cfg, vision=source.config.vision, embed_dim=source.config.embed_dim,
                      quick_gelu=source.config.quick_gelu)
    if text_path is not None:
        cfg = replace(cfg, text=hf_text.config_from_pretrained(text_path, opts.text_pooling, cfg.text.context_length))
    if opts.fit_tokenizer:
        if opts.text_tower:
            raise SystemExit("--fit-tokenizer fits kubeclip's own text tower; a --text-tower brings its tokenizer")
        texts = islice((text for _, files in split_samples(opts.data, opts.split) for text in captions(files)),
                       FIT_CAPTIONS)
        tokenizer = ClipTokenizer(context_length=cfg.text.context_length, merges=fit_merges(texts, opts.fit_tokenizer))
        cfg = replace(cfg, text=replace(cfg.text, vocab_size=tokenizer.vocab_size))
    clip = model.CLIP(cfg)
    if opts.fit_tokenizer:
        clip.tokenizer = tokenizer
    if text_path is not None:
        hf_text.load_pretrained(clip.text.transformer, text_path)
    if source is not None:
        clip.visual.load_state_dict(source.visual.state_dict())
    if opts.lock_image:
        clip.lock_image_tower(opts.unlock_last)
    if opts.lock_text:
        clip.lock_text_tower(opts.unlock_last)
    if opts.unlock_last and not (opts.lock_image or opts.lock_text):
        raise SystemExit("--unlock-last applies to a locked tower: add --lock-image and/or --lock-text")
    return clip


def param_groups(clip: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay only on matrices: never on gains, biases, embeddings or the logit scale."""
    no_decay = ("token_embedding.weight", "positional_embedding", "class_embedding", "logit_scale",
                "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight")
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


def train_step(net, loss_fn, batches, dtype, device, no_sync, shared: list[torch.nn.Parameter]) -> torch.Tensor:
    """Forward and backward over k micro-batches with the contrastive batch spanning all of them.

    With k > 1, features of every micro-batch are first computed without gradients; then each
    micro-batch is recomputed with gradients and its loss taken against the cached others (GradCache).
    Summed, the k backward passes give exactly the gradient of one batch of k x B: each feature
    receives its gradient once, so the loss is not divided by k. The `shared` parameters (logit
    scale, loss bias) take part in every one of the k losses, whose values are all the same, so
    their summed gradient is k times the true one and is divided by k. SLIP's loss (`ssl_loss` of a `Slip`'s
    output) is each micro-batch's own: it is added to that micro-batch's loss, divided by k.
    """
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    if len(batches) == 1:
        images, ids = batches[0]
        with autocast:
            output = net(images, ids)
            loss = loss_fn(*output[:3]) + ssl_loss(output)
        loss.backward()
        return loss.detach()
    with torch.no_grad(), autocast:
        cached = [net(images, ids) for images, ids in batches]
    for j, (images, ids) in enumerate(batches):
        sync = contextlib.nullcontext() if j == len(batches) - 1 else no_sync()
        with sync, autocast:
            fresh = net(images, ids)
            image_features = torch.cat([fresh[0] if i == j else c[0] for i, c in enumerate(cached)])
            text_features = torch.cat([fresh[1] if i == j else c[1] for i, c in enumerate(cached)])
            loss = loss_fn(image_features, text_features, fresh[2]) + ssl_loss(fresh) / len(batches)
        loss.backward()
    for param in shared:
        param.grad /= len(batches)
    return loss.detach()


def train(opts: TrainOptions) -> dict:
    """Train to `opts.steps` (or for `opts.time_budget`); returns the final metrics record."""
    started = time.time()
    budget = parse_duration(opts.time_budget) if opts.time_budget else None
    if not 0 <= opts.word_dropout < 1:
        raise SystemExit(f"--word-dropout must be in [0, 1), the chance each caption word is dropped, not "
                         f"{opts.word_dropout}")
    if opts.fit_tokenizer < 0:
        raise SystemExit(f"--fit-tokenizer is a number of BPE merges to learn (0: CLIP's vocabulary), not "
                         f"{opts.fit_tokenizer}")
    if not 0 < opts.crop_scale <= 1:
        raise SystemExit(f"--crop-scale must be in (0, 1], the smallest share of an image a crop keeps, not "
                         f"{opts.crop_scale}")
    if not 0 <= opts.label_smoothing < 1 or (opts.label_smoothing and opts.loss != "clip"):
        raise SystemExit(f"--label-smoothing must be in [0, 1) and goes with --loss clip, not {opts.label_smoothing} "
                         f"with --loss {opts.loss}")
    if opts.ssl_scale < 0 or opts.ssl_images < 1:
        raise SystemExit(f"--ssl-scale must be 0 (off) or more and --ssl-images 1 or more, not {opts.ssl_scale} and "
                         f"{opts.ssl_images}")
    if opts.text_ssl_captions < 0 or opts.text_ssl_scale < 0:
        raise SystemExit(f"--text-ssl-captions and --text-ssl-scale must be 0 (off) or more, not "
                         f"{opts.text_ssl_captions} and {opts.text_ssl_scale}")
    if opts.ssl_temperature <= 0:
        raise SystemExit(f"--ssl-temperature must be above 0 (SimCLR's logits are divided by it), not "
                         f"{opts.ssl_temperature}")
    env = init_distributed()
    torch.manual_seed(opts.seed)
    clip = build_model(opts).to(env.device).channels_last()
    clip.set_grad_checkpointing(opts.grad_checkpointing)
    if (clip.text_tower_frozen or not isinstance(clip.visual, VisionTransformer)
            or not any(p.requires_grad for p in clip.visual.parameters())):
        opts = replace(opts, ssl_scale=0.0)  # SLIP's views: for a ViT image tower learning beside a text tower
    if clip.text_tower_frozen or not opts.text_ssl_scale:
        opts = replace(opts, text_ssl_captions=0)  # the captions' contrast: for a text tower that learns
    trainee = (Slip(clip, opts.ssl_scale, opts.ssl_images, opts.seed, opts.ssl_temperature,
                    opts.text_ssl_scale).to(env.device)
               if opts.ssl_scale or opts.text_ssl_captions else clip)
    loss_fn = (SigLipLoss(env.rank, env.world_size) if opts.loss == "siglip"
               else ClipLoss(env.rank, env.world_size, opts.label_smoothing)).to(env.device)
    if opts.loss == "siglip":
        with torch.no_grad():
            clip.logit_scale.fill_(math.log(10))  # SigLIP starts its temperature at 10
    optimizer = torch.optim.AdamW(param_groups(trainee, opts.weight_decay) + [{"params": list(loss_fn.parameters()),
                                                                                "weight_decay": 0.0}],
                                  lr=opts.lr, betas=(opts.beta1, opts.beta2), eps=opts.eps,
                                  fused=True)  # one pass over each tensor: 3-4x faster than foreach on CPUs
    dtype = autocast_dtype(opts.precision, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    checkpoints = Checkpoints(opts.out)

    start, batches_done, skipped_total, budget_start = 0, 0, 0, started
    # a budgeted run's schedule is open until its pace is known (the learning rate stays ~0 meanwhile)
    schedule = Schedule(opts.lr, OPEN, OPEN) if budget is not None else Schedule(opts.lr, opts.warmup, opts.steps)
    resume_from = checkpoints.latest() if opts.resume == "latest" else opts.resume
    if resume_from:
        weights, state = load_state(resume_from)
        clip.load_state_dict(weights)
        if ("slip_head" in state) != bool(opts.ssl_scale):
            was, now = ("with", "without") if "slip_head" in state else ("without", "with")
            raise SystemExit(f"{resume_from} was trained {was} SLIP and this run is set up {now} it: resume with the "
                             "--ssl-scale it was trained with (its lineage.json has it)")
        if opts.ssl_scale:
            trainee.head.load_state_dict(state["slip_head"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        loss_fn.load_state_dict(state["loss"])
        start, batches_done, skipped_total = state["step"], state["batches"], state["skipped"]
        torch.set_rng_state(state["rng"])
        if budget is not None and "schedule" in state:  # a budgeted run goes on with its schedule and spent time
            schedule = Schedule(**state["schedule"])
            budget_start -= state["budget_seconds"]
    opts = replace(opts, steps=schedule.steps, warmup=schedule.warmup,
                   word_dropout=0.0 if clip.text_tower_frozen else opts.word_dropout)

    net = trainee
    if env.world_size > 1:
        net = DistributedDataParallel(trainee, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if opts.compile:
        net = torch.compile(net)
    no_sync = net.no_sync if isinstance(net, DistributedDataParallel) else contextlib.nullcontext
    shared = [clip.logit_scale, *loss_fn.parameters()]
    text_cache = TextFeatureCache(clip, env.device) if opts.cache_text_features and clip.text_tower_frozen else None

    stream = data.Stream(shard_urls(opts.data, opts.split), opts.batch_size, clip.image_size,
                         clip.context_length, opts.seed, opts.shuffle_buffer, opts.resample, env.rank, env.world_size,
                         tokenizer=clip.tokenizer, crop_scale=opts.crop_scale, hflip=opts.hflip,
                         word_dropout=opts.word_dropout, second_captions=opts.text_ssl_captions)
    batches = iter(data.loader(stream, opts.workers, skip_batches=batches_done))
    metrics = TrainMetrics(opts.out, opts.metrics_port, opts.pushgateway, start) if env.main else None
    global_batch = opts.batch_size * env.world_size * opts.accum_steps
    nonfinite, record = 0, {}
    clock = TimeBudget(budget, budget_start, opts.warmup_fraction, env.device, env.world_size) if budget else None
    progress = tqdm(total=None if schedule.steps == OPEN else opts.steps, initial=start, unit="step",
                    disable=not env.main or None, mininterval=1)
    net.train()
    step = start
    while step < opts.steps:
        step += 1
        lr = schedule.at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_start = time.time()
        micro = [next(batches) for _ in range(opts.accum_steps)]
        data_wait = time.time() - step_start
        if text_cache is not None:  # the locked tower's pooled output replaces the ids
            micro = [(images, text_cache(ids)) for images, ids in micro]
        micro = [(images.to(env.device, non_blocking=True), text.to(env.device, non_blocking=True))
                 for images, text in micro]
        batches_done += opts.accum_steps
        if trainee is not clip:
            trainee.start_step(step)

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
                torch.nn.utils.clip_grad_norm_(trainee.parameters(), opts.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        elapsed = time.time() - step_start

        if clock is not None:
            refitted, spent = clock.after_step(step, schedule)
            if refitted:
                schedule, opts = refitted, replace(opts, steps=refitted.steps, warmup=refitted.warmup)
                progress.total = opts.steps
            if spent and step < opts.steps:  # slower than measured: stop at the budget all the same
                opts = replace(opts, steps=step)

        if env.main:
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
                     "step": step, "batches": batches_done, "skipped": skipped_total, "rng": torch.get_rng_state(),
                     "schedule": asdict(schedule), "budget_seconds": time.time() - budget_start}
            if opts.ssl_scale:
                state["slip_head"] = trainee.head.state_dict()
            if env.main:
                checkpoints.save(clip, state, step, opts.keep_last)
                metrics.checkpoint_done()
            if env.world_size > 1:
                dist.barrier()
    progress.close()
    if env.main:
        manifest_sha = file_sha256(f"{opts.data.rstrip('/')}/manifest.json")
        parameters = {**asdict(opts), "world_size": env.world_size}
        if text_cache is not None:
            parameters["text_cache"] = {"captions": len(text_cache.features), "hits": text_cache.hits,
                                        "misses": text_cache.misses}
        write_lineage(opts.out, "train", {"data": {"url": opts.data, "manifest_sha256": manifest_sha}},
                      parameters, started)
    if env.world_size > 1:
        dist.destroy_process_group()
    return record
