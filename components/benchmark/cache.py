"""Text classifiers on disk, keyed by (model, class names, templates).

Building a classifier runs the text tower once per class and template (80,000 prompts for ImageNet
with the 80-template ensemble); reading it back is one small safetensors file. The key is a sha256
over the model id and the exact strings, so any change to the weights, a class name or a template
is a different entry and a stale one is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DEFAULT_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "kubeclip")


class ClassifierCache:
    def __init__(self, directory: str | Path, model_id: str):
        """`model_id` names the weights (kubeclip uses their sha256) and whatever else changes the
        embeddings, e.g. a backend with other numerics; same id, same text embeddings."""
        self.directory = Path(directory).expanduser() / "classifiers"
        self.model_id = model_id

    def key(self, classnames: list[str], templates: list[str]) -> str:
        content = json.dumps({"model": self.model_id, "classes": classnames, "templates": templates})
        return hashlib.sha256(content.encode()).hexdigest()

    def path(self, classnames: list[str], templates: list[str]) -> Path:
        return self.directory / f"{self.key(classnames, templates)}.safetensors"

    def load(self, classnames: list[str], templates: list[str]) -> dict[str, torch.Tensor] | None:
        path = self.path(classnames, templates)
        return load_file(path) if path.is_file() else None

    def store(self, classnames: list[str], templates: list[str], tensors: dict[str, torch.Tensor]) -> None:
        """Write to a temporary file and rename it, so a reader never sees half a file. A cache that
        cannot be written (a read-only home in a pod) costs time, never the run: it warns."""
        path = self.path(classnames, templates)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        except OSError as e:
            warnings.warn(f"text classifier not cached: {e}", stacklevel=2)
            return
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                      metadata={"model": self.model_id, "classes": str(len(classnames)),
                                "templates": str(len(templates))})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
