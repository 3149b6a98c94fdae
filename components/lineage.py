"""`<out>/lineage.json`: what a step read, with which parameters, from which commit, and when.

An input that another step wrote carries that step's lineage (found in the folder holding it), so each
record holds the whole chain back to the raw data: a Triton repository's lineage.json says which export,
checkpoint, training data and commits it came from. `chain` flattens it to one line per step, the form the
KFP artifacts' metadata and the InferenceService's annotation carry.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import subprocess
import time
from pathlib import Path
from typing import Any

import fsspec

LINEAGE = "lineage.json"


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
    """Inputs are {name: {"url": ..., hashes...}}; an input under a folder that holds a lineage.json gets it
    as its "lineage"."""
    inputs = {name: {**value, "lineage": upstream} if isinstance(value, dict) and "url" in value
              and (upstream := producer_lineage(str(value["url"]))) else value for name, value in inputs.items()}
    record = {"step": step, "inputs": inputs, "parameters": parameters, "git_commit": git_commit(),
              "started": started, "finished": time.time()}
    with fsspec.open(f"{out.rstrip('/')}/{LINEAGE}", "w") as f:
        f.write(json.dumps(record, indent=2, default=str) + "\n")


def read_lineage(out: str) -> dict | None:
    """The lineage.json a step wrote to `out`, or None when there is none."""
    fs, path = fsspec.core.url_to_fs(f"{out.rstrip('/')}/{LINEAGE}")
    return json.loads(fs.cat_file(path)) if fs.isfile(path) else None


def producer_lineage(url: str, levels: int = 3) -> dict | None:
    """The lineage of the step that wrote `url`: the nearest lineage.json in `url` (a folder) or in one of the
    `levels` folders above it (a checkpoint's weights lie three below the run folder)."""
    fs, path = fsspec.core.url_to_fs(url)
    for _ in range(levels + 1):
        if fs.isfile(f"{path}/{LINEAGE}"):
            return json.loads(fs.cat_file(f"{path}/{LINEAGE}"))
        path = posixpath.dirname(path.rstrip("/"))
        if not path or path in ("/", "."):
            return None
    return None


def chain(record: dict) -> list[dict]:
    """One entry per step, this one first, then its inputs' producers depth first (each step once): the step,
    its commit, when it finished, and each input's url with its hash or model id."""
    steps, seen = [], set()

    def visit(rec: dict) -> None:
        key = (rec["step"], rec.get("finished"))
        if key in seen:
            return
        seen.add(key)
        inputs = {name: {k: v for k, v in value.items() if k != "lineage"} if isinstance(value, dict) else value
                  for name, value in rec["inputs"].items()}
        steps.append({"step": rec["step"], "git_commit": rec.get("git_commit"), "finished": rec.get("finished"),
                      "inputs": inputs})
        for value in rec["inputs"].values():
            if isinstance(value, dict) and isinstance(value.get("lineage"), dict):
                visit(value["lineage"])

    visit(record)
    return steps


def lineage_metadata(out: str) -> dict:
    """What a KFP output artifact's metadata carries of the lineage.json its step wrote into it."""
    record = read_lineage(out)
    return {"lineage": chain(record)} if record else {}
