"""Shared test fixtures. Data and tools that a test needs but cannot make itself skip on a user's
machine with the install hint, and fail under CI=true, where they must be present."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("KUBECLIP_SHARED_DATA", ROOT.parent / "shared" / "data"))


def takes_ctrl_c() -> None:
    """`preexec_fn` of a child a test interrupts as a terminal would: pytest started in the background by a
    non-interactive shell (`nohup ... &`) runs with SIGINT ignored, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def require(present: bool, what: str, hint: str) -> None:
    if present:
        return
    message = f"{what} is missing: {hint}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    require(path.is_dir(), f"dataset {path}",
            "kubeclip's tests read real data from ../shared/data beside the checkout "
            "(or set KUBECLIP_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def flickr8k() -> Path:
    return shared_dataset("flickr8k")


@pytest.fixture(scope="session")
def cifar10() -> Path:
    return shared_dataset("cifar10-test")


@pytest.fixture
def kfp_local(tmp_path, monkeypatch):
    """KFP's local SubprocessRunner in a throwaway pipeline root; components run in this environment."""
    from kfp import local

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline-root"),
               raise_on_error=True)
    return tmp_path / "pipeline-root"


SCHEMAS = SHARED_DATA.parent / "schemas"


def validate_custom_resource(obj: dict) -> None:
    """Validate a custom resource against its strict JSON Schema in ../shared/schemas (unknown fields fail)."""
    import jsonschema

    group, version = obj["apiVersion"].split("/")
    path = SCHEMAS / group / f"{obj['kind'].lower()}_{version}.json"
    require(path.is_file(), f"schema {path}", "the custom resource schemas live in ../shared/schemas")
    jsonschema.validate(obj, json.loads(path.read_text()))
