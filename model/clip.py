"""CLIP: an image tower and a text tower projected into one embedding space (Radford et al. 2021).

Attribute names are OpenAI's checkpoint keys, so `state_dict()` maps one to one onto OpenAI's and
open_clip's weights.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.config import CLIPConfig
from model.resnet import ModifiedResNet
from model.transformer import Transformer, VisionTransformer


class CLIPOutput(NamedTuple):
    image_features: torch.Tensor  # (B, E), L2-normalised
    text_features: torch.Tensor  # (B, E), L2-normalised
    logit_scale: torch.Tensor  # scalar multiplier, exp of the learnable parameter


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        v, t = config.vision, config.text
        if v.is_resnet:
            self.visual = ModifiedResNet(v.layers, config.embed_dim, v.heads, v.image_size, v.width)
        else:
            self.visual = VisionTransformer(v.image_size, v.patch_size, v.width, v.layers, v.heads,
                                            config.embed_dim, config.quick_gelu)
        self.transformer = Transformer(t.width, t.layers, t.heads, config.quick_gelu, causal=True)
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = nn.LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI's scheme: small embeddings, depth-scaled residual projections, zero-init last BN of each block."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(proj.weight, std=pool.c_proj.in_features ** -0.5)
            for name, param in self.visual.named_parameters():
                if name.startswith("layer") and name.endswith("bn3.weight"):
                    nn.init.zeros_(param)
        width, layers = self.config.text.width, self.config.text.layers
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer blocks in backward; ResNet stages are left alone, since
        recomputing them would update BatchNorm statistics twice."""
        self.transformer.grad_checkpointing = enable
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enable

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]  # (B, L, D)
        x = self.ln_final(self.transformer(x))
        x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]  # pool at end-of-text, the largest id
        x = x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> CLIPOutput:
        return CLIPOutput(self.encode_image(images, normalize=True), self.encode_text(ids, normalize=True),
                          self.logit_scale.exp())
