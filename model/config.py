"""Architectures as data: the numbers that decide tensor shapes, and the named JSON configs.

The JSON layout is open_clip's (`embed_dim`, `quick_gelu`, `vision_cfg`, `text_cfg`), so a config
file moves between the two projects unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12  # an int: ViT depth; four ints: ModifiedResNet stages
    width: int = 768  # ViT width, or the ResNet's base width (its attention pool runs at width * 32)
    patch_size: int | None = 32  # ViT only
    head_width: int = 64  # heads = width // head_width, OpenAI's rule

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple)

    @property
    def heads(self) -> int:
        return (self.width * 32 if self.is_resnet else self.width) // self.head_width


@dataclass(frozen=True)
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass(frozen=True)
class BertConfig:
    """The shape-deciding fields of a Hugging Face BERT-style `config.json` (names as Hugging Face spells them)."""
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0


@dataclass(frozen=True)
class HFTextConfig:
    """A pretrained Hugging Face encoder as the text tower, pooled, then a learned linear projection.

    The JSON keys follow open_clip's `text_cfg` for Hugging Face towers (`hf_model_name`,
    `hf_pooler_type`, `hf_proj_type`) plus `hf_config`, the encoder's sizes, so a checkpoint
    rebuilds without the original model folder.
    """
    hf_model_name: str  # the folder the weights came from; lineage only once they are in a checkpoint
    hf_config: BertConfig
    hf_pooler_type: str = "mean_pooler"  # mean_pooler (over the attention mask) or cls_pooler
    hf_proj_type: str = "linear"  # a bias-free linear map from the encoder width to embed_dim
    context_length: int = 77

    def __post_init__(self):
        if self.hf_pooler_type not in ("mean_pooler", "cls_pooler"):
            raise ValueError(f"hf_pooler_type must be mean_pooler or cls_pooler, not {self.hf_pooler_type!r}")
        if self.hf_proj_type != "linear":
            raise ValueError(f"hf_proj_type {self.hf_proj_type!r} is not supported; kubeclip has 'linear'")

    @property
    def width(self) -> int:
        return self.hf_config.hidden_size


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int
    vision: VisionConfig
    text: TextConfig | HFTextConfig
    quick_gelu: bool = False  # OpenAI's weights were trained with QuickGELU; GELU otherwise

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        unknown = set(d) - {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}
        if unknown:
            raise ValueError(f"unsupported CLIP config keys {sorted(unknown)}; kubeclip reads "
                             "embed_dim, quick_gelu, vision_cfg and text_cfg")
        vision = dict(d["vision_cfg"])
        if isinstance(vision.get("layers"), list):
            vision["layers"] = tuple(vision["layers"])
            vision["patch_size"] = None
        text = dict(d["text_cfg"])
        if "hf_model_name" in text:
            text["hf_config"] = _checked(BertConfig, text.get("hf_config", {}))
            text = _checked(HFTextConfig, text)
        else:
            text = _checked(TextConfig, text)
        return cls(embed_dim=int(d["embed_dim"]), quick_gelu=bool(d.get("quick_gelu", False)),
                   vision=_checked(VisionConfig, vision), text=text)

    def to_dict(self) -> dict[str, Any]:
        vision = asdict(self.vision)
        if self.vision.is_resnet:
            vision["layers"] = list(vision["layers"])
            del vision["patch_size"]
        return {"embed_dim": self.embed_dim, "quick_gelu": self.quick_gelu,
                "vision_cfg": vision, "text_cfg": asdict(self.text)}

    @classmethod
    def from_json(cls, path: str | Path) -> CLIPConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _checked(kind: type, d: dict[str, Any]):
    unknown = set(d) - {f.name for f in fields(kind)}
    if unknown:
        raise ValueError(f"unsupported {kind.__name__} keys {sorted(unknown)}")
    return kind(**d)


def available_models() -> list[str]:
    """Names of the built-in configs (`model/configs/*.json`)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_config(name_or_config: str | Path | dict | CLIPConfig) -> CLIPConfig:
    """A config from a built-in name, a JSON file path, an open_clip-style dict or a CLIPConfig."""
    if isinstance(name_or_config, CLIPConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return CLIPConfig.from_dict(name_or_config)
    builtin = CONFIG_DIR / f"{name_or_config}.json"
    if builtin.is_file():
        return CLIPConfig.from_json(builtin)
    if Path(name_or_config).is_file():
        return CLIPConfig.from_json(name_or_config)
    raise ValueError(f"unknown model {str(name_or_config)!r}: pass a JSON config file or one of "
                     f"{', '.join(available_models())}")
