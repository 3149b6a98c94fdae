"""kubeclip's CLIP: the network, its tokenizer, image transforms and checkpoint I/O.

Knows nothing of Kubernetes, KFP, DVC or Triton. Its names are imported on first use (PEP 562), so a
torch-free module of it (`kubeclip.model.prompts`) can be imported without loading torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "load": "checkpoint", "save": "checkpoint",
    "CLIP": "clip", "CLIPOutput": "clip",
    "BertConfig": "config", "CLIPConfig": "config", "HFTextConfig": "config", "TextConfig": "config",
    "VisionConfig": "config", "available_models": "config", "get_config": "config",
    "build": "factory", "create_model_and_transforms": "factory", "get_tokenizer": "factory",
    "tokenize": "tokenizer",
    "image_transform": "transforms",
    "zero_shot": "zeroshot",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
