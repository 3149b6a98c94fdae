"""Training batches from caption shards: split over processes and loader workers, shuffled, resumable.

Every (process, worker) pair is a "slot" that streams its own share of the shards, epoch after
epoch, and builds whole batches; the DataLoader takes batches from workers in turn. All randomness
(shard order, shuffle buffer, crop, mirroring, caption choice, word dropout) is seeded by (seed, epoch,
slot or sample key), so the stream is a pure function of the position: resuming skips the batches
already trained on without decoding them, and gives the same batches an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kubeclip import model
from kubeclip.components.datasets import captions, image_bytes, read_samples
from kubeclip.model.tokenizer import default_tokenizer

@dataclass(frozen=True)
class Stream:
    shards: tuple[str, ...]
    batch_size: int  # per process
    image_size: int
    context_length: int
    seed: int = 0
    shuffle_buffer: int = 1000
    resample: bool = False  # draw shards with replacement instead of passing over them in epochs
    rank: int = 0
    world_size: int = 1
    tokenizer: object = None  # the model's (`clip.tokenizer`); None: CLIP's BPE
    crop_scale: float = 0.9  # the smallest share of an image a training crop covers
    hflip: bool = False  # mirror half the images, swapping "left" and "right" in their captions
    word_dropout: float = 0.0  # drop each caption word with this probability (keeping one at least)
    second_captions: int = 0  # the first k samples also get another caption of their photo: ids rows B..B+k-1


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


class CaptionBatches(IterableDataset):
    """An endless stream of (images [B,3,H,W], token ids [B+k,L]) for one process; k: `second_captions`."""

    def __init__(self, stream: Stream, skip_batches: int = 0):
        self.stream = stream
        self.skip_batches = skip_batches  # batches this process already trained on
        self.transform = model.image_transform(stream.image_size, train=True, crop_scale=stream.crop_scale)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        # The loader takes batch b from worker b % workers, starting again at worker 0 on resume; so this
        # worker plays the role of the worker that would have made the next batch it hands out.
        role = (worker + self.skip_batches) % workers
        skip = max(0, -(-(self.skip_batches - role) // workers))  # batches that role already made
        s = self.stream
        slot, slots = s.rank * workers + role, s.world_size * workers
        batch: list[tuple[str, dict[str, bytes]]] = []
        for sample in self._samples(slot, slots):
            batch.append(sample)
            if len(batch) < s.batch_size:
                continue
            if skip:
                skip -= 1
            else:
                yield self._collate(batch)
            batch = []

    def _samples(self, slot: int, slots: int) -> Iterator[tuple[str, dict[str, bytes]]]:
        s = self.stream
        rng = random.Random(_seed(s.seed, "buffer", slot))
        buffer: list[tuple[str, dict[str, bytes]]] = []
        epoch = 0
        while True:
            for key, files in self._epoch_samples(epoch, slot, slots):
                buffer.append((f"{epoch}/{key}", files))
                if len(buffer) >= s.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
            epoch += 1

    def _epoch_samples(self, epoch: int, slot: int, slots: int) -> Iterator[tuple[str, dict[str, bytes]]]:
        s = self.stream
        rng = random.Random(_seed(s.seed, "shards", epoch, slot if s.resample else ""))
        if s.resample:
            yield from (x for _ in s.shards for x in read_samples(rng.choice(s.shards)))
            return
        order = list(s.shards)
        rng.shuffle(order)
        if len(order) >= slots:
            for url in order[slot::slots]:
                yield from read_samples(url)
        else:  # fewer shards than slots: every slot reads all shards and keeps every slots-th sample
            index = 0
            for url in order:
                for sample in read_samples(url):
                    if index % slots == slot:
                        yield sample
                    index += 1

    def _collate(self, batch: list[tuple[str, dict[str, bytes]]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, texts, seconds = [], [], []
        for index, (key, files) in enumerate(batch):
            rng = random.Random(_seed(self.stream.seed, "sample", key))
            # The random crop draws from torch's CPU generator. Seed only that one: torch.manual_seed also
            # queues a seed for every accelerator, formatting a stack trace each time (~40% of the loader).
            torch.default_generator.manual_seed(rng.getrandbits(63))
            with Image.open(io.BytesIO(image_bytes(files))) as image:
                pixels = self.transform(image)
            options = captions(files)
            chosen = rng.randrange(len(options))
            caption = options[chosen]
            mirrored = self.stream.hflip and rng.random() < 0.5
            if mirrored:
                pixels, caption = pixels.flip(-1), mirror_caption(caption)
            images.append(pixels)
            texts.append(self._drop_words(caption, rng))
            if index < self.stream.second_captions:  # a photo with one caption gets it again (other words dropped)
                others = [c for i, c in enumerate(options) if i != chosen] or [options[chosen]]
                second = others[rng.randrange(len(others))]
                seconds.append(self._drop_words(mirror_caption(second) if mirrored else second, rng))
        ids = (self.stream.tokenizer or default_tokenizer())(texts + seconds, self.stream.context_length)
        return torch.stack(images), ids

    def _drop_words(self, caption: str, rng: random.Random) -> str:
        if not self.stream.word_dropout:
            return caption
        words = caption.split()
        kept = [w for w in words if rng.random() >= self.stream.word_dropout]
        return " ".join(kept or [rng.choice(words)])


_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left"}


def mirror_caption(caption: str) -> str:
    """The caption of the mirrored image: "left" and "right" trade places, keeping their case."""
    def swap(match: re.Match) -> str:
        word = match.group()
        other = _OTHER_SIDE[word.lower()]
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other
    return _SIDE.sub(swap, caption)


def loader(stream: Stream, workers: int, skip_batches: int = 0) -> DataLoader:
    """Batches for this process; `skip_batches` resumes mid-epoch."""
    return DataLoader(CaptionBatches(stream, skip_batches), batch_size=None, num_workers=workers,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                      pin_memory=torch.cuda.is_available())
