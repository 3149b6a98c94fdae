"""`<out>/lineage.json`: what a step read, with which parameters, from which commit, and when."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import fsspec


def file_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with fsspec.open(url, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The commit of the kubeclip source tree, or None outside a git checkout (an installed image)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_lineage(out: str, step: str, inputs: dict[str, Any], parameters: dict[str, Any], started: float) -> None:
    record = {"step": step, "inputs": inputs, "parameters": parameters, "git_commit": git_commit(),
              "started": started, "finished": time.time()}
    with fsspec.open(f"{out.rstrip('/')}/lineage.json", "w") as f:
        f.write(json.dumps(record, indent=2, default=str) + "\n")
