"""Training checkpoints: `checkpoints/step-NNNNNNNN/` committed atomically, `latest` naming the newest.

A step folder counts only once its `COMMITTED` marker exists, written after everything else, and
`latest` (a text file, so object stores work) moves only after that; a run killed mid-save leaves
the previous checkpoint in charge.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import fsspec
import torch

import model
from components.storage import atomic_write, is_local
from model.checkpoint import WEIGHTS_FILE

MARKER = "COMMITTED"
STATE_FILE = "train_state.pt"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


class Checkpoints:
    def __init__(self, out: str):
        self.root = f"{out.rstrip('/')}/checkpoints"
        self.fs, self.path = fsspec.core.url_to_fs(self.root)

    def latest(self) -> str | None:
        """URL of the newest committed step folder, or None."""
        latest = f"{self.path}/latest"
        if not self.fs.exists(latest):
            return None
        name = self.fs.cat_file(latest).decode().strip()
        if not self.fs.exists(f"{self.path}/{name}/{MARKER}"):
            raise RuntimeError(f"{self.root}/latest names {name}, which was never committed")
        return f"{self.root}/{name}"

    def save(self, clip: torch.nn.Module, state: dict[str, Any], step: int, keep_last: int) -> str:
        name = step_name(step)
        with tempfile.TemporaryDirectory() as tmp:
            model.save(clip, tmp)
            torch.save(state, Path(tmp) / STATE_FILE)
            target = f"{self.path}/{name}"
            if self.fs.exists(target):  # left by a run killed mid-save: never committed, so replace it
                self.fs.rm(target, recursive=True)
            self.fs.makedirs(target, exist_ok=True)
            for file in sorted(Path(tmp).rglob("*")):
                if file.is_file():
                    destination = f"{target}/{file.relative_to(tmp).as_posix()}"
                    self.fs.makedirs(destination.rsplit("/", 1)[0], exist_ok=True)
                    self.fs.put_file(str(file), destination)
        self.fs.pipe_file(f"{target}/{MARKER}", b"")
        atomic_write(self.fs, f"{self.path}/latest", f"{name}\n".encode())
        self._prune(keep_last)
        return f"{self.root}/{name}"

    def _prune(self, keep_last: int) -> None:
        committed = sorted(p for p in self.fs.ls(self.path, detail=False)
                           if p.rsplit("/", 1)[-1].startswith("step-") and self.fs.exists(f"{p}/{MARKER}"))
        for old in committed[:-keep_last] if keep_last > 0 else []:
            self.fs.rm(old, recursive=True)


def load_state(step_url: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and the training state of a step folder; pickles only with weights_only=True."""
    fs, path = fsspec.core.url_to_fs(step_url)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(path) if is_local(fs) else Path(tmp)
        if not is_local(fs):
            fs.get(path, str(local), recursive=True)
        weights = model.load(local).state_dict()
        state = torch.load(local / STATE_FILE, map_location="cpu", weights_only=True)
    return weights, state
