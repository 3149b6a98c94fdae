"""Training checkpoints: `checkpoints/step-NNNNNNNN/` committed atomically, `latest` naming the newest.

A step folder counts only once its `COMMITTED` marker exists, written after everything else, and
`latest` (a text file, so object stores work) moves only after that; a run killed mid-save leaves
the previous checkpoint in charge.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import torch

from kubeclip import model
from kubeclip.components.storage import atomic_write, local_copy, local_output
from kubeclip.model.checkpoint import CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE

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
        target = f"{self.path}/{name}"
        if self.fs.exists(target):  # left by a run killed mid-save: never committed, so replace it
            self.fs.rm(target, recursive=True)
        with local_output(f"{self.root}/{name}", last=(MARKER,)) as folder:
            model.save(clip, folder)
            torch.save(state, folder / STATE_FILE)
            (folder / MARKER).write_bytes(b"")
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
    with local_copy(step_url) as local:
        weights = model.load(local).state_dict()
        state = torch.load(Path(local) / STATE_FILE, map_location="cpu", weights_only=True)
    return weights, state


def weights_url(checkpoint: str) -> str:
    """The weights file behind `checkpoint` (a file, a step folder, a `checkpoints` folder via `latest`, or a
    train --out folder), found as model.checkpoint.find_weights finds it, but on any fsspec URL: so that of a
    remote run only that one file and its companions are fetched, not every kept checkpoint and training state."""
    fs, path = fsspec.core.url_to_fs(checkpoint)
    return checkpoint.rstrip("/") + _weights_suffix(fs, path.rstrip("/"), checkpoint)


def _weights_suffix(fs: fsspec.AbstractFileSystem, path: str, checkpoint: str) -> str:
    """What leads from `path` to its weights file: "" for the file itself, else "/<name>/..."."""
    if fs.isfile(path):
        return ""
    if fs.isfile(f"{path}/{WEIGHTS_FILE}"):
        return f"/{WEIGHTS_FILE}"
    if fs.isfile(f"{path}/latest"):
        name = fs.cat_file(f"{path}/latest").decode().strip()
        return f"/{name}" + _weights_suffix(fs, f"{path}/{name}", checkpoint)
    if fs.isdir(f"{path}/checkpoints"):
        return "/checkpoints" + _weights_suffix(fs, f"{path}/checkpoints", checkpoint)
    raise FileNotFoundError(f"no weights at {checkpoint}: expected a weights file, a folder holding {WEIGHTS_FILE}, "
                            "a checkpoints folder with a 'latest' file, or a train --out folder")


@contextmanager
def local_weights(checkpoint: str) -> Iterator[tuple[str, Path]]:
    """(URL, local path) of the weights file behind `checkpoint`, local or remote, for model.load: a remote one
    is downloaded with the config.json and tokenizer/ beside it, into a temporary folder removed on exit."""
    url = weights_url(checkpoint)
    folder, name = posixpath.split(url)
    with local_copy(folder or ".", only=(name, CONFIG_FILE, TOKENIZER_DIR)) as local:
        yield url, Path(local) / name
