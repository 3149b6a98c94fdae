"""TorchScript archives load as data: their tensors are extracted as `torch.jit.load` would give them, and their
code never runs (`torch.jit.load` here only makes the reference, on archives the tests made themselves)."""

import json
import pickle
import zipfile
from typing import Tuple

import open_clip
import pytest
import torch

from kubeclip import model
from kubeclip.model.checkpoint import read_weights
from kubeclip.model.config import CONFIG_DIR
from tests.model.test_checkpoint import OpenAIArchive, RunsCode

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

MARKS = []  # what the archive's __setstate__ does when it runs: a Python op appends here
_LIBRARY = torch.library.Library("kubeclip_torchscript_test", "DEF")
_LIBRARY.define("mark(Tensor x) -> Tensor")
_LIBRARY.impl("mark", lambda x: MARKS.append("ran") or x.clone(), "CompositeExplicitAutograd")


class RestoresByCode(torch.nn.Module):
    """A module whose state comes back only by running its scripted __setstate__, which has a side effect."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return self.weight, self.training

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        self.weight = torch.ops.kubeclip_torchscript_test.mark(state[0])
        self.training = state[1]

    def forward(self, x):
        return x * self.weight


def jit_state_dict(path):
    return torch.jit.load(path, map_location="cpu").state_dict()


def assert_same(state, reference):
    assert list(state) == list(reference)
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in reference.items())


def test_setstate_code_is_refused_without_running(tmp_path):
    path = tmp_path / "weights.safetensors"
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 2), RestoresByCode())).save(path)
    jit_state_dict(path)
    assert MARKS == ["ran"]  # torch.jit.load runs it
    MARKS.clear()
    refusal = r"weights\.safetensors: its class __torch__\..*\.RestoresByCode .*\(__setstate__\)"
    for load in (read_weights, model.load):
        with pytest.raises(ValueError, match=refusal):
            load(path)
    assert MARKS == []


def test_globals_outside_the_allow_list_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "archive.pt"
    torch.jit.trace(torch.nn.Linear(2, 2), torch.ones(1, 2)).save(path)
    evil = tmp_path / "evil.safetensors"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(RunsCode(), protocol=2, fix_imports=False)  # builtins.exec, writing a marker file
            dst.writestr(item, data)
    with pytest.raises(ValueError, match=r"evil\.safetensors: it would need builtins\.exec"):
        model.load(evil)
    assert not (tmp_path / "PWNED").exists()


def test_traced_openai_archive_gives_what_jit_load_gave(tmp_path):
    clip = model.build("tiny-vit-quickgelu").eval()
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.trace(OpenAIArchive(clip).half(), torch.randn(1, 3, 64, 64).half()).save(path)
    state, openai = read_weights(path)
    assert_same(state, jit_state_dict(path))
    assert openai and state["visual.proj"].dtype == torch.float16  # model.load's use: test_checkpoint.py


def test_scripted_open_clip_archive_loads(tmp_path):
    torch.manual_seed(0)
    reference = open_clip.CLIP(**json.loads((CONFIG_DIR / "tiny-vit.json").read_text())).eval()
    path = tmp_path / "open_clip.pt"
    torch.jit.script(reference).save(path)
    state, openai = read_weights(path)
    assert_same(state, jit_state_dict(path))
    assert "attn_mask" in state and not openai  # a non-persistent buffer, saved anyway; no OpenAI sizes
    loaded = model.load(path, quick_gelu=False)
    assert loaded.config == model.get_config("tiny-vit")
    assert_same(loaded.state_dict(), reference.state_dict())
