"""Checkpoint I/O: every supported form loads, formats are told by content, and pickles cannot run code."""

import json
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file

from kubeclip import model
from kubeclip.model.checkpoint import infer_config


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return model.build("tiny-vit").eval()


def same_weights(a, b) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_save_writes_the_checkpoint_contract(clip, tmp_path):
    """docs/contracts.md, "Checkpoints"."""
    model.save(clip, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == clip.config.to_dict()
    tokenizer_config = json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer_config["type"] == "clip_bpe" and (tmp_path / "tokenizer" / tokenizer_config["vocab_file"]).is_file()
    loaded = model.load(tmp_path)
    assert loaded.config == clip.config and not loaded.training and same_weights(loaded, clip)


def test_load_follows_step_checkpoints_and_train_out_folders(clip, tmp_path):
    out = tmp_path / "run"
    model.save(clip, out / "checkpoints" / "step-00000030")
    (out / "checkpoints" / "latest").write_text("step-00000030\n")
    for source in (out, out / "checkpoints", out / "checkpoints" / "step-00000030",
                   out / "checkpoints" / "step-00000030" / "model.safetensors"):
        assert same_weights(model.load(source), clip)


def test_format_is_detected_by_content_not_extension(clip, tmp_path):
    save_file(clip.state_dict(), tmp_path / "weights.pt")
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "weights.safetensors")
    for name in ("weights.pt", "weights.safetensors"):
        assert same_weights(model.load(tmp_path / name, config="tiny-vit"), clip)


def test_openai_torchscript_archive_loads_with_quickgelu(tmp_path):
    clip = model.build("tiny-vit-quickgelu").eval()
    archive = torch.jit.trace(OpenAIArchive(clip).half(), torch.randn(1, 3, 64, 64).half())
    archive.save(tmp_path / "ViT-tiny.pt")
    loaded = model.load(tmp_path / "ViT-tiny.pt")  # no config, no quick_gelu: both from the archive
    assert loaded.config == clip.config
    assert loaded.visual.proj.dtype == torch.float32
    assert all(torch.equal(v, clip.state_dict()[k].half().float()) for k, v in loaded.state_dict().items())


class OpenAIArchive(torch.nn.Module):
    """OpenAI's released layout: CLIP's modules plus three int entries in the state dict, in fp16."""

    def __init__(self, clip):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, param in clip.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, images):
        return self.visual(images)


class RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_that_runs_code_is_refused(writer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = {"state_dict": {"visual.proj": torch.zeros(2, 2)}, "trap": RunsCode()}
    path = tmp_path / "evil.safetensors"  # the extension must not matter either
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(ValueError, match="arbitrary code"):
        model.load(path)
    assert not (tmp_path / "PWNED").exists()


def test_bare_state_dict_warns_and_defaults_to_quickgelu(clip):
    with pytest.warns(UserWarning, match="quick_gelu=False"):
        assert model.load(clip.state_dict()).config.quick_gelu is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.load(clip.state_dict(), quick_gelu=False).config == clip.config
        assert model.load(clip.state_dict(), config="tiny-vit-quickgelu").config.quick_gelu is True


def test_saved_config_decides_the_activation(tmp_path):
    model.save(model.build("tiny-rn"), tmp_path)
    assert model.load(tmp_path).config.quick_gelu is False
    assert model.load(tmp_path, quick_gelu=True).config.quick_gelu is True


@pytest.mark.parametrize("name", ["ViT-L-14", "RN101", "tiny-rn"])
def test_shapes_give_the_architecture(name):
    with torch.device("meta"):  # shapes only: no memory for ViT-L's weights
        state = model.build(name).state_dict()
    assert infer_config(state) == model.get_config(name)


def test_mismatched_weights_say_what_differs(clip):
    smaller = {**clip.config.to_dict(), "embed_dim": 64}
    with pytest.raises(ValueError, match="wrong shapes.*text_projection: \\(128, 128\\) vs \\(128, 64\\)"):
        model.load(clip.state_dict(), config=smaller)
    with pytest.raises(FileNotFoundError, match="train --out"):
        model.load("/nonexistent/run")
    with pytest.raises(ValueError, match="not a CLIP state dict"):
        model.load({"weight": torch.zeros(1)})
