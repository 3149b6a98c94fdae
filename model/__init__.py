"""kubeclip's CLIP: the network, its tokenizer, image transforms and checkpoint I/O.

Knows nothing of Kubernetes, KFP, DVC or Triton.
"""

from model.checkpoint import load, save
from model.clip import CLIP, CLIPOutput
from model.config import BertConfig, CLIPConfig, HFTextConfig, TextConfig, VisionConfig, available_models, get_config
from model.tokenizer import tokenize
from model.transforms import image_transform


def build(name_or_config) -> CLIP:
    """A freshly initialised CLIP from a built-in name, a JSON config file, a dict or a CLIPConfig."""
    return CLIP(get_config(name_or_config))


__all__ = ["CLIP", "BertConfig", "CLIPConfig", "CLIPOutput", "HFTextConfig", "TextConfig", "VisionConfig",
           "available_models", "build", "image_transform", "load", "save", "tokenize"]
