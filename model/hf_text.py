"""A pretrained Hugging Face BERT-style encoder as CLIP's text tower, in plain torch.

Module and parameter names are Hugging Face's `BertModel` ones (`embeddings.word_embeddings`,
`encoder.layer.N.attention.self.query`, ...), so a `model.safetensors` or `pytorch_model.bin`
loads one to one, and the tower as a whole is laid out as open_clip's `HFTextEncoder`
(`text.transformer.*`, `text.proj`). Post-LayerNorm blocks, exact (erf) GELU, absolute
positions, token type 0 throughout. Dropout is left out: CLIP's own towers have none, and a
locked tower runs in eval mode anyway. BERT's pooler (`pooler.dense`) is not used.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from kubeclip.model.config import BertConfig, HFTextConfig
from kubeclip.model.transformer import tracing

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_ACTIVATIONS = {"gelu": nn.GELU, "gelu_new": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU}


def _dense_ln(width: int, inner: int, eps: float) -> nn.ModuleDict:
    return nn.ModuleDict({"dense": nn.Linear(inner, width), "LayerNorm": nn.LayerNorm(width, eps=eps)})


class BertLayer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        d, eps = c.hidden_size, c.layer_norm_eps
        self.heads = c.num_attention_heads
        self.attention = nn.ModuleDict({
            "self": nn.ModuleDict({name: nn.Linear(d, d) for name in ("query", "key", "value")}),
            "output": _dense_ln(d, d, eps),
        })
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(d, c.intermediate_size)})
        self.output = _dense_ln(d, c.intermediate_size, eps)
        self.act = _ACTIVATIONS[c.hidden_act]()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.attention["self"]
        q, k, v = (qkv[n](x).view(B, L, self.heads, D // self.heads).transpose(1, 2) for n in ("query", "key", "value"))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, hd); mask (B, 1, 1, L)
        a = a.transpose(1, 2).reshape(B, L, D)
        out = self.attention["output"]
        x = out["LayerNorm"](x + out["dense"](a))  # post-LN, as BERT
        return self.output["LayerNorm"](x + self.output["dense"](self.act(self.intermediate["dense"](x))))


class BertModel(nn.Module):
    """`input_ids` [B, L] and `attention_mask` [B, L] (1 = token, 0 = padding) -> hidden states [B, L, D]."""

    def __init__(self, c: BertConfig):
        super().__init__()
        if c.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {c.hidden_act!r} is not supported (have {', '.join(_ACTIVATIONS)})")
        self.config = c
        self.grad_checkpointing = False
        self.embeddings = nn.ModuleDict({
            "word_embeddings": nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id),
            "position_embeddings": nn.Embedding(c.max_position_embeddings, c.hidden_size),
            "token_type_embeddings": nn.Embedding(c.type_vocab_size, c.hidden_size),
            "LayerNorm": nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
        })
        self.encoder = nn.ModuleDict({"layer": nn.ModuleList(BertLayer(c) for _ in range(c.num_hidden_layers))})
        for m in self.modules():  # BERT's initialisation; pretrained weights replace it
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = e["word_embeddings"](ids) + e["position_embeddings"](positions) + e["token_type_embeddings"].weight[0]
        x = e["LayerNorm"](x)  # (B, L, D)
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L): every query sees the real tokens
        for layer in self.encoder["layer"]:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, mask, use_reentrant=False)
            else:
                x = layer(x, mask)
        return x


class HFTextEncoder(nn.Module):
    """Token ids -> pooled encoder output (`pool`) -> embedding (`proj`), as open_clip's HFTextEncoder."""

    def __init__(self, c: HFTextConfig, embed_dim: int):
        super().__init__()
        self.config = c
        self.transformer = BertModel(c.hf_config)
        self.proj = nn.Linear(c.width, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=c.width ** -0.5)

    def pool(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] ids (padding = `pad_token_id`, unless a mask is given) -> [B, D], before the projection."""
        mask = (ids != self.config.hf_config.pad_token_id) if attention_mask is None else attention_mask.bool()
        if not tracing():
            keep = int(mask.sum(1).max())  # right padding past the longest text changes nothing: drop it
            ids, mask = ids[:, :keep], mask[:, :keep]
        x = self.transformer(ids, mask)
        if self.config.hf_pooler_type == "cls_pooler":
            return x[:, 0]
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp(min=1e-9)  # mean over real tokens, as sentence-transformers

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.pool(ids, attention_mask))


def parse_text_tower(spec: str) -> str:
    """`hf:PATH` -> PATH as given, a Hugging Face model folder."""
    if not spec.startswith("hf:"):
        raise ValueError(f"text tower {spec!r}: expected hf:PATH, a local Hugging Face model folder")
    return spec[3:]


def config_from_pretrained(path: str | Path, pooling: str = "mean", context_length: int = 77) -> HFTextConfig:
    """The text-tower config of a Hugging Face model folder (its `config.json`), pooled by `mean` or `cls`."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder: it has no config.json")
    hf = json.loads((path / "config.json").read_text())
    if hf.get("model_type") != "bert" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{path}: model_type {hf.get('model_type')!r} is not supported; kubeclip's text tower "
                         "reads BERT-style encoders (model_type 'bert', absolute positions)")
    if pooling not in ("mean", "cls"):
        raise ValueError(f"text pooling must be mean or cls, not {pooling!r}")
    fields = {k: hf[k] for k in BertConfig.__dataclass_fields__ if k in hf}
    bert = BertConfig(**fields)
    if context_length > bert.max_position_embeddings:
        raise ValueError(f"context length {context_length} exceeds the encoder's {bert.max_position_embeddings} positions")
    return HFTextConfig(hf_model_name=str(path.resolve()), hf_config=bert, hf_pooler_type=f"{pooling}_pooler",
                        context_length=context_length)


def read_pretrained(path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder weights of a Hugging Face model folder under BertModel's names (pickles: weights_only)."""
    path = Path(path)
    file = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"{path} holds none of {', '.join(WEIGHT_FILES)}")
    state = load_file(file) if file.suffix == ".safetensors" else torch.load(file, map_location="cpu", weights_only=True)
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                                               "LayerNorm.bias")
        if key.startswith(("embeddings.", "encoder.")) and not key.endswith("position_ids"):
            out[key] = value.float()
    return out


def load_pretrained(encoder: BertModel, path: str | Path) -> None:
    """Copy a Hugging Face model folder's weights into `encoder`, checking that names and shapes match one to one."""
    state = read_pretrained(path)
    expected = encoder.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: weights do not fit the BERT encoder: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    encoder.load_state_dict(state)
