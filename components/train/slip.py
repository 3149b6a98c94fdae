"""SLIP (Mu et al. 2022): CLIP's loss plus SimCLR's on two augmented views of some of each batch's images; and
beside it the same contrast on the text side, between two captions of one photo.

The self-supervised task teaches the image tower from the photos alone, which few captions cannot; the
paper finds it lifts zero-shot accuracy most where pairs are few. The views are made from the training
crops on the batch tensor (crop, flip, colour jitter, grey, as SimCLR's), so the data loader does no
more work, and the image tower reads crops and views in one pass. The head is a training aid: the
checkpoint's state keeps it for resuming, the model never carries it.

The captions' contrast (as SimCSE's supervised one, with a photo's other captions as paraphrases) teaches the
text tower that different words for one scene mean one thing: a caption that says "automobile" must find its
sibling that says "car". It needs no head: captions of one photo belong together in CLIP's space.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from kubeclip.model.clip import CLIP
from kubeclip.model.losses import SimCLRLoss
from kubeclip.model.preprocess import MEAN, STD

JITTER = 0.4  # SimCLR's brightness, contrast and saturation strength


class SlipOutput(NamedTuple):
    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    ssl_loss: torch.Tensor  # already weighted by the SSL scale


class Slip(nn.Module):
    """Trains `clip` (kept as `.clip`, so its checkpoint is the plain CLIP's) with SimCLR's losses at `temperature`:
    with `scale` > 0 (a ViT image tower), on two views of the first `images` images of each batch, weighted by
    `scale`, through an MLP head on the image tower's pooled output (SLIP's three layers, 4x the tower's width);
    and, when a batch's token ids carry k rows after its B captions (the data stream's `second_captions`),
    between rows i and B+i (two captions of photo i) in CLIP's text space, weighted by `text_scale`.
    """

    def __init__(self, clip: CLIP, scale: float, images: int, seed: int = 0, temperature: float = 0.1,
                 text_scale: float = 1.0):
        super().__init__()
        self.clip, self.scale, self.images, self.seed, self.text_scale = clip, scale, images, seed, text_scale
        self.generator = torch.Generator()
        self.head = image_head(clip) if scale else None
        self.simclr = SimCLRLoss(temperature)

    def start_step(self, step: int) -> None:
        """Seed the views by (seed, step): a resumed run draws the views an uninterrupted one would have."""
        self.generator.manual_seed(self.seed * 1_000_003 + step)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> SlipOutput:
        batch = images.shape[0]
        if not torch.is_grad_enabled():  # a cached pass (several micro-batches per step) needs no SSL
            return SlipOutput(*self.clip(images, text[:batch]), images.new_zeros(()))
        loss = images.new_zeros(())
        if self.head is None:
            image_embeddings = self.clip.encode_image(images)
        else:
            with torch.no_grad():
                views = two_views(images[:self.images], self.generator)
            pooled = self.clip.visual.pool(torch.cat([images, views]))
            image_embeddings = pooled[:batch] @ self.clip.visual.proj
            loss = self.scale * self.simclr(self.head(pooled[batch:]))
        seconds = text.shape[0] - batch
        if seconds:
            pooled_text = self.clip.pool_text(text)  # all captions in one pass
            text = pooled_text[:batch]
            z = self.clip.project_text(pooled_text)
            loss = loss + self.text_scale * self.simclr(torch.stack([z[:seconds], z[batch:]], dim=1).flatten(0, 1))
        return SlipOutput(*self.clip.output(image_embeddings, text), loss)


def image_head(clip: CLIP) -> nn.Module:
    """SLIP's projection head for the views: three layers on the ViT's pooled class token, 4x its width."""
    width = clip.visual.ln_post.normalized_shape[0]
    hidden = 4 * width
    return nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, clip.config.embed_dim))


def ssl_loss(output: tuple) -> torch.Tensor | float:
    """SLIP's weighted SimCLR loss in a training output; 0 for a plain CLIP's."""
    return getattr(output, "ssl_loss", 0.0)


def two_views(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, 3, H, W] normalised images -> [2B, ...]: rows 2i and 2i+1 are two views of image i. Each view is a
    random crop of 8-100% of the area (aspect 3/4-4/3) resized back, mirrored half the time, colour-jittered
    (brightness, contrast, saturation) 80% of the time and grey 20%. Random draws from `generator` (on the CPU)."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    x = (images.float() * std + mean).repeat_interleave(2, dim=0)
    n = x.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.empty(n, *shape).uniform_(low, high, generator=generator).to(x.device)

    area, ratio = uniform(0.08, 1.0), uniform(math.log(3 / 4), math.log(4 / 3)).exp()
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    mirror = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = w * mirror, h
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-1, 1) * (1 - w), uniform(-1, 1) * (1 - h)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    jittered = (uniform(0, 1, 1, 1, 1) < 0.8).float()

    def factor() -> torch.Tensor:
        return 1 + jittered * uniform(-JITTER, JITTER, 1, 1, 1)

    x = (x * factor()).clamp(0, 1)  # brightness
    mean_grey = grey(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean_grey) * factor() + mean_grey).clamp(0, 1)  # contrast
    x = ((x - grey(x)) * factor() + grey(x)).clamp(0, 1)  # saturation
    x = torch.where(uniform(0, 1, 1, 1, 1) < 0.2, grey(x), x)
    return ((x - mean) / std).to(images.dtype)


def grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, repeated over the three channels."""
    return (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
