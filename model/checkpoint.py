"""Checkpoint I/O: save as safetensors + config.json; load kubeclip, OpenAI and open_clip weights.

Formats are told apart by their bytes, never by file extension, and no weights file can run code:
pickles are only ever opened with `weights_only=True`, and TorchScript archives are never executed
(no `torch.jit.load`): their tensors are extracted with a restricted unpickler (`kubeclip.model.torchscript`).
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kubeclip.model import torchscript
from kubeclip.model.clip import CLIP
from kubeclip.model.config import CLIPConfig, TextConfig, VisionConfig, get_config

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
# Not weights but values CLIP derives from its config: the sizes OpenAI's archives hold as ints, and open_clip's
# causal `attn_mask`, a non-persistent buffer that TorchScript archives save anyway (they keep no persistence flag).
_DERIVED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def save(clip: CLIP, path: str | Path) -> Path:
    """Write `model.safetensors`, `config.json` and `tokenizer/` into the folder `path`; returns the weights file."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in clip.state_dict().items()}
    save_file(state, path / WEIGHTS_FILE)
    save_config_and_tokenizer(clip, path)
    return path / WEIGHTS_FILE


def save_config_and_tokenizer(clip: CLIP, path: str | Path) -> None:
    """`config.json` and `tokenizer/`: what any artifact of the model (weights, ONNX towers) travels with."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(clip.config.to_dict(), indent=2) + "\n")
    clip.tokenizer.save(path / TOKENIZER_DIR)


def find_weights(path: str | Path) -> Path:
    """The weights file behind a file, a step folder, a `checkpoints` folder (via `latest`) or a train `--out`."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / WEIGHTS_FILE).is_file():
        return path / WEIGHTS_FILE
    if (path / "latest").is_file():
        return find_weights(path / (path / "latest").read_text().strip())
    if (path / "checkpoints").is_dir():
        return find_weights(path / "checkpoints")
    raise FileNotFoundError(f"no weights at {path}: expected a weights file, a folder holding {WEIGHTS_FILE}, "
                            "a checkpoints folder with a 'latest' file, or a train --out folder")


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict in a safetensors, torch.save or TorchScript file, and whether it was OpenAI's release
    archive: a TorchScript one holding OpenAI's `input_resolution` (a scripted open_clip model holds none)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return load_file(path), False
    if head[:4] == b"PK\x03\x04" and torchscript.is_archive(path):
        state = torchscript.read_state_dict(path)
        return state, "input_resolution" in state
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        try:
            with open(path, "rb") as f:  # a file object: torch.load would switch formats on a .safetensors name
                return torch.load(f, map_location="cpu", weights_only=True), False
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"refusing to load {path}: it is a pickle holding objects other than tensors, and unpickling "
                "those can run arbitrary code. If you trust its source, re-save its state dict as safetensors "
                f"(safetensors.torch.save_file). Detail: {str(e).splitlines()[0]}") from e
    raise ValueError(f"{path} is not a safetensors, PyTorch or TorchScript weights file")


def clean_state_dict(state: Mapping) -> dict[str, torch.Tensor]:
    """Unwrap open_clip's `state_dict` key and DDP's `module.` prefix, drop derived entries, upcast to fp32."""
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in _DERIVED_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value.float() if value.is_floating_point() else value
    return out


def infer_config(state: Mapping[str, torch.Tensor], quick_gelu: bool = False) -> CLIPConfig:
    """Read every size from tensor shapes, as OpenAI's `build_model` does (heads = width // 64)."""
    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    if any(k.startswith("text.transformer.") for k in state):
        raise ValueError("a state dict with a Hugging Face text tower does not tell its sizes (heads): load it "
                         "from its kubeclip folder, whose config.json has them, or pass config")
    if "visual.proj" in state:
        width, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(image_size=grid * patch, layers=count("visual.transformer.resblocks."),
                              width=width, patch_size=patch)
    elif "visual.attnpool.positional_embedding" in state:
        grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(image_size=grid * 32, layers=tuple(count(f"visual.layer{i}.") for i in range(1, 5)),
                              width=state["visual.layer1.0.conv1.weight"].shape[0], patch_size=None)
    else:
        raise ValueError("not a CLIP state dict: it has neither 'visual.proj' (ViT) nor "
                         "'visual.attnpool.*' (ModifiedResNet)")
    width = state["ln_final.weight"].shape[0]
    text = TextConfig(context_length=state["positional_embedding"].shape[0],
                      vocab_size=state["token_embedding.weight"].shape[0], width=width, heads=width // 64,
                      layers=count("transformer.resblocks."))
    return CLIPConfig(embed_dim=state["text_projection"].shape[1], vision=vision, text=text, quick_gelu=quick_gelu)


def load(source: str | Path | Mapping, config=None, quick_gelu: bool | None = None) -> CLIP:
    """A CLIP in eval mode from weights in any supported form.

    `source`: a state dict, a weights file (safetensors, torch.save, OpenAI's TorchScript archive),
    a kubeclip step folder, `checkpoints` folder or train `--out` folder.
    `config`: a model name, JSON file, dict or CLIPConfig; by default the saved `config.json`, else
    inferred from tensor shapes.
    `quick_gelu=None`: QuickGELU for OpenAI archives, the saved or given config's choice otherwise,
    and QuickGELU with a warning for bare state dicts, whose shapes cannot tell.
    """
    saved_config, openai_archive, tokenizer_dir = None, False, None
    if isinstance(source, Mapping):
        state = source
    else:
        weights = find_weights(source)
        state, openai_archive = read_weights(weights)
        if not isinstance(state, Mapping):
            raise ValueError(f"{weights} holds a {type(state).__name__}, not a state dict")
        if (weights.parent / CONFIG_FILE).is_file():
            saved_config = CLIPConfig.from_json(weights.parent / CONFIG_FILE)
        if (weights.parent / TOKENIZER_DIR).is_dir():
            tokenizer_dir = weights.parent / TOKENIZER_DIR
    state = clean_state_dict(state)

    cfg = get_config(config) if config is not None else saved_config or infer_config(state)
    if quick_gelu is None:
        if openai_archive:
            quick_gelu = True
        elif config is None and saved_config is None:
            warnings.warn("bare state dict: its shapes cannot tell QuickGELU from GELU, so QuickGELU (OpenAI's) "
                          "is used; pass quick_gelu=False to model.load for weights trained with GELU", stacklevel=2)
            quick_gelu = True
        else:
            quick_gelu = cfg.quick_gelu
    clip = CLIP(replace(cfg, quick_gelu=quick_gelu))

    expected = clip.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(f"weights do not fit the architecture {cfg.to_dict()}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    clip.load_state_dict(state, strict=False)
    clip.tokenizer_dir = tokenizer_dir
    return clip.eval()
