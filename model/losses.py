"""Contrastive losses over the global batch: CLIP's symmetric cross-entropy and SigLIP's sigmoid loss; and SimCLR's
loss over one process's image views, which SLIP adds to CLIP's.

A loss takes `(image_features, text_features, logit_scale)` from this process and gathers the other
processes' features with gradients, so N processes of B pairs train exactly like one of N x B.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _GatherWithGrad(torch.autograd.Function):
    """All processes' rows in rank order; backward sums every process's gradient for each row and hands
    the process its own rows' part (every process's loss depends on every row)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), features.shape[0]
        gathered = [torch.empty_like(features) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, features.contiguous())
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_features(features: torch.Tensor, world_size: int) -> torch.Tensor:
    return features if world_size == 1 else _GatherWithGrad.apply(features)


class ClipLoss(nn.Module):
    """Each process scores its own rows against the global batch (the local-loss formulation):
    O(B x N) memory instead of O(N x N), and after DDP averages gradients, the exact full-batch gradient.

    `label_smoothing` gives that share of each row's target to all N pairs alike (Fini et al. 2023): captions
    such as "a dog runs through the grass" fit many photos, and a one-hot target calls all but one of them wrong.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, label_smoothing: float = 0.0):
        super().__init__()
        self.rank, self.world_size, self.label_smoothing = rank, world_size, label_smoothing

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        all_images = gather_features(image_features, self.world_size)
        all_texts = gather_features(text_features, self.world_size)
        logits_per_image = logit_scale * image_features @ all_texts.T  # (B, N)
        logits_per_text = logit_scale * text_features @ all_images.T  # (B, N)
        labels = torch.arange(image_features.shape[0], device=image_features.device) + self.rank * image_features.shape[0]
        smoothing = self.label_smoothing
        return (F.cross_entropy(logits_per_image, labels, label_smoothing=smoothing)
                + F.cross_entropy(logits_per_text, labels, label_smoothing=smoothing)) / 2


class SigLipLoss(nn.Module):
    """Zhai et al. 2023: every (image, text) pair is an independent binary decision, with a learnable bias.

    The loss holds the bias (initialised to -10, as the paper does); `logit_scale` comes from the model.
    """

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        all_texts = gather_features(text_features, self.world_size)
        logits = logit_scale * image_features @ all_texts.T + self.logit_bias  # (B, N)
        batch = image_features.shape[0]
        labels = -torch.ones_like(logits)
        labels[:, self.rank * batch:(self.rank + 1) * batch].fill_diagonal_(1.0)
        # normalised by the global batch so that DDP's mean over processes gives the full-batch loss
        return -F.logsigmoid(labels * logits).sum() / batch


class SimCLRLoss(nn.Module):
    """SimCLR's NT-Xent (Chen et al. 2020): rows 2i and 2i+1 are two views of one image, and each row must pick its
    twin out of the other rows, at temperature 0.1 (SLIP's). Over this process's rows only: the views are a
    regulariser of the image tower, not the contrastive batch, and need no gather."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings, dim=-1)
        logits = (z @ z.T / self.temperature).fill_diagonal_(float("-inf"))
        twins = torch.arange(z.shape[0], device=z.device) ^ 1
        return F.cross_entropy(logits, twins)
