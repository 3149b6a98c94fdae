"""open_clip's entry points over kubeclip's models: a model with its transforms, and its own tokenizer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kubeclip.model.checkpoint import TOKENIZER_DIR, find_weights, load
from kubeclip.model.clip import CLIP, text_tokenizer
from kubeclip.model.config import CLIPConfig, available_models, get_config
from kubeclip.model.tokenizer import load_tokenizer
from kubeclip.model.transforms import image_transform


def build(name_or_config) -> CLIP:
    """A freshly initialised CLIP from a built-in name, a JSON config file, a dict or a CLIPConfig."""
    return CLIP(get_config(name_or_config))


def create_model_and_transforms(name_or_path: str | Path | CLIPConfig, quick_gelu: bool | None = None):
    """(model in eval mode, train transform, eval transform), as open_clip's function of this name returns.

    A built-in name (`available_models()`), JSON config or CLIPConfig gives fresh weights; anything else
    is read with `load` (OpenAI, open_clip or safetensors weights, a kubeclip checkpoint or run folder).
    `quick_gelu` overrides the activation (see `load`).
    """
    if _is_config(name_or_path):
        config = get_config(name_or_path)
        clip = build(config if quick_gelu is None else replace(config, quick_gelu=quick_gelu)).eval()
    else:
        clip = load(name_or_path, quick_gelu=quick_gelu)
    return clip, image_transform(clip.image_size, train=True), image_transform(clip.image_size)


def get_tokenizer(model_or_name: CLIP | str | Path | CLIPConfig):
    """The tokenizer a model's text tower was trained with: a CLIP's own, a checkpoint's `tokenizer/`
    folder, or the one a built-in name or config implies (CLIP's BPE, or a Hugging Face tower's)."""
    if isinstance(model_or_name, CLIP):
        return model_or_name.tokenizer
    if _is_config(model_or_name):
        return text_tokenizer(get_config(model_or_name).text)
    saved = find_weights(model_or_name).parent / TOKENIZER_DIR
    return load_tokenizer(saved) if saved.is_dir() else load(model_or_name).tokenizer


def _is_config(name_or_path) -> bool:
    return (isinstance(name_or_path, (CLIPConfig, dict)) or str(name_or_path) in available_models()
            or str(name_or_path).endswith(".json"))
