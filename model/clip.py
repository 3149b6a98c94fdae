"""CLIP: an image tower and a text tower projected into one embedding space (Radford et al. 2021).

Attribute names are OpenAI's checkpoint keys, so `state_dict()` maps one to one onto OpenAI's and
open_clip's weights. A Hugging Face text tower lives in `text` (`text.transformer`, `text.proj`), as in
open_clip's CustomTextCLIP. Each CLIP carries its tokenizer: `clip.tokenizer(texts)` gives the ids its
text tower reads.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kubeclip.model.config import CLIPConfig, HFTextConfig, TextConfig
from kubeclip.model.hf_text import HFTextEncoder
from kubeclip.model.resnet import ModifiedResNet
from kubeclip.model.transformer import Transformer, VisionTransformer, tracing


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
        if isinstance(t, HFTextConfig):
            self.text = HFTextEncoder(t, config.embed_dim)
        else:
            self.transformer = Transformer(t.width, t.layers, t.heads, config.quick_gelu, causal=True)
            self.token_embedding = nn.Embedding(t.vocab_size, t.width)
            self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
            self.ln_final = nn.LayerNorm(t.width)
            self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._tokenizer = None
        self.tokenizer_dir = None  # a checkpoint's `tokenizer/` folder, read on first use (set by `model.load`)
        self.initialize_parameters()

    @property
    def has_hf_text(self) -> bool:
        return isinstance(self.config.text, HFTextConfig)

    @property
    def tokenizer(self):
        """What turns texts into this CLIP's text-tower input: the checkpoint's own (`tokenizer_dir`), else
        the one its config implies (`text_tokenizer`)."""
        if self._tokenizer is None:
            from kubeclip.model.tokenizer import load_tokenizer

            self._tokenizer = (load_tokenizer(self.tokenizer_dir) if self.tokenizer_dir is not None
                               else text_tokenizer(self.config.text))
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def initialize_parameters(self) -> None:
        """OpenAI's scheme: small embeddings, depth-scaled residual projections, zero-init last BN of each block."""
        if not self.has_hf_text:
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(proj.weight, std=pool.c_proj.in_features ** -0.5)
            for name, param in self.visual.named_parameters():
                if name.startswith("layer") and name.endswith("bn3.weight"):
                    nn.init.zeros_(param)
        if self.has_hf_text:
            return  # BERT's own initialisation, then its pretrained weights
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
        (self.text.transformer if self.has_hf_text else self.transformer).grad_checkpointing = enable
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enable

    def channels_last(self) -> CLIP:
        """Channels-last weights for a ResNet image tower: its convolutions then run faster (oneDNN on CPUs,
        tensor cores on GPUs) and hand the layout on to their outputs. A ViT, one patch convolution, is left
        as it is."""
        if isinstance(self.visual, ModifiedResNet):
            self.visual.to(memory_format=torch.channels_last)
        return self

    def lock_image_tower(self, unlocked_blocks: int = 0) -> None:
        """Freeze the image tower, as LiT does; its last `unlocked_blocks` blocks (ViT blocks, ResNet bottlenecks)
        and everything after them (final LayerNorm and projection, or the attention pool) stay trainable."""
        v = self.visual
        if isinstance(v, VisionTransformer):
            blocks, head = list(v.transformer.resblocks), [v.ln_post, v.proj]
        else:
            blocks, head = [b for stage in (v.layer1, v.layer2, v.layer3, v.layer4) for b in stage], [v.attnpool]
        _lock([v], blocks, head, unlocked_blocks)

    def lock_text_tower(self, unlocked_blocks: int = 0) -> None:
        """Freeze the text tower's pretrained part: a Hugging Face encoder (its new projection `text.proj`
        always trains), or all of a CLIP text tower up to and including `text_projection`. The last
        `unlocked_blocks` blocks and everything after them stay trainable."""
        if self.has_hf_text:
            blocks, head = list(self.text.transformer.encoder["layer"]), []
        else:
            blocks, head = list(self.transformer.resblocks), [self.ln_final, self.text_projection]
        _lock(self.text_tower_parameters(), blocks, head, unlocked_blocks)

    def text_tower_parameters(self) -> list[nn.Parameter]:
        """The parameters `pool_text` uses: everything of the text tower before a Hugging Face tower's projection."""
        if self.has_hf_text:
            return list(self.text.transformer.parameters())
        return [self.token_embedding.weight, self.positional_embedding, *self.transformer.parameters(),
                *self.ln_final.parameters(), self.text_projection]

    @property
    def text_tower_frozen(self) -> bool:
        """No weight before the projection trains, so `pool_text` of a caption never changes and can be cached."""
        params = self.text_tower_parameters()
        if not self.has_hf_text:
            params = params[:-1]  # text_projection is applied after the cache
        return not any(p.requires_grad for p in params)

    def train(self, mode: bool = True) -> CLIP:
        super().train(mode)
        for m in self.modules():  # a frozen BatchNorm keeps its running statistics frozen too
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def pool_text(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The text tower up to its projection: [B, L] ids -> [B, width]. What a locked tower's cache holds."""
        if self.has_hf_text:
            return self.text.pool(ids, attention_mask)
        if not tracing():  # causal attention: the padding after the longest text changes nothing; drop it
            ids = ids[:, : int(self.text_lengths(ids).max())]  # (~1.7x faster training on Flickr8k's captions)
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]  # (B, L, D)
        x = self.ln_final(self.transformer(x))
        return x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]  # pool at end-of-text, the largest id

    def text_lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B] tokens per text up to its end (right padding excluded)."""
        if self.has_hf_text:
            return ids.ne(self.config.text.hf_config.pad_token_id).sum(dim=1)
        return ids.argmax(dim=-1) + 1  # the end-of-text token has the largest id

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text.proj(pooled) if self.has_hf_text else pooled @ self.text_projection

    def encode_text(self, ids: torch.Tensor, normalize: bool = False,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] ids -> [B, E]. Hugging Face towers take padding from `attention_mask`, else from the pad id."""
        x = self.project_text(self.pool_text(ids, attention_mask))
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> CLIPOutput:
        """`text`: token ids [B, L], or the pooled text tower output [B, width] (floating point) computed
        beforehand, as a locked tower's feature cache gives; then only the projection runs."""
        return self.output(self.encode_image(images), text)

    def output(self, image_embeddings: torch.Tensor, text: torch.Tensor) -> CLIPOutput:
        """`forward`'s result from image embeddings computed elsewhere (SLIP's training, with its extra views)."""
        pooled = text if text.is_floating_point() else self.pool_text(text)
        return CLIPOutput(F.normalize(image_embeddings, dim=-1), F.normalize(self.project_text(pooled), dim=-1),
                          self.logit_scale.exp())


def text_tokenizer(text: TextConfig | HFTextConfig):
    """The tokenizer a text config implies: its Hugging Face model folder's `tokenizer.json`, or CLIP's BPE."""
    from kubeclip.model.tokenizer import HF_TOKENIZER_FILE, HFTokenizer, default_tokenizer

    if isinstance(text, HFTextConfig):
        return HFTokenizer(f"{text.hf_model_name}/{HF_TOKENIZER_FILE}", text.context_length)
    return default_tokenizer(text.context_length)


def _lock(tower, blocks: list[nn.Module], head: list, unlocked_blocks: int) -> None:
    if not 0 <= unlocked_blocks <= len(blocks):
        raise ValueError(f"cannot leave {unlocked_blocks} blocks unlocked: the tower has {len(blocks)}")
    for part in tower:
        _trainable(part, False)
    for part in (blocks[len(blocks) - unlocked_blocks:] + head) if unlocked_blocks else []:
        _trainable(part, True)


def _trainable(part: nn.Module | nn.Parameter, flag: bool) -> None:
    for p in [part] if isinstance(part, nn.Parameter) else part.parameters():
        p.requires_grad_(flag)
