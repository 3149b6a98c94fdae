"""kubeclip's open_clip-style entry points: the same model, features and ids that `model.load` and the model's
own tokenizer give, for CLIP's BPE, a fitted vocabulary and a Hugging Face text tower; zero-shot in one call."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import kubeclip
from kubeclip import model
from kubeclip.components.benchmark.encoders import TorchEncoder
from kubeclip.components.benchmark.zeroshot import text_classifier
from kubeclip.model.tokenizer import ClipTokenizer, fit_merges
from kubeclip.model.transformer import QuickGELU
from tests.model.test_hf_text import hf_clip, minilm  # noqa: F401 (minilm: a fixture)

CAPTIONS = ["a red triangle on grass", "two blue squares", "a green circle beside a red triangle"] * 20
IMAGES = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)) for i in range(3)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A saved tiny-vit whose tokenizer was fitted to its captions (as `train --fit-tokenizer` saves it)."""
    torch.manual_seed(0)
    tokenizer = ClipTokenizer(merges=fit_merges(CAPTIONS, 40))
    config = model.get_config("tiny-vit")
    clip = model.CLIP(replace(config, text=replace(config.text, vocab_size=tokenizer.vocab_size)))
    clip.tokenizer = tokenizer
    out = tmp_path_factory.mktemp("fitted")
    model.save(clip, out)
    return out


def test_the_model_and_transforms_are_loads(fitted):
    clip, train, preprocess = kubeclip.create_model_and_transforms(fitted)
    loaded = model.load(fitted)
    pixels = torch.stack([preprocess(image) for image in IMAGES])
    assert torch.equal(pixels, torch.stack([model.image_transform(loaded.image_size)(i) for i in IMAGES]))
    assert not clip.training and torch.equal(clip.encode_image(pixels), loaded.encode_image(pixels))
    assert train(IMAGES[0]).shape == (3, clip.image_size, clip.image_size)


def test_a_name_gives_fresh_weights_with_the_activation_asked_for():
    clip, _, _ = kubeclip.create_model_and_transforms("tiny-vit", quick_gelu=True)
    assert isinstance(clip.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert kubeclip.get_tokenizer("tiny-vit")("a cat").tolist() == model.tokenize("a cat").tolist()


def test_the_tokenizer_is_the_models_own(fitted):
    texts = ["a red triangle beside two blue squares"]
    own = model.load(fitted).tokenizer(texts)
    assert kubeclip.get_tokenizer(fitted)(texts).tolist() == own.tolist()
    assert kubeclip.get_tokenizer(model.load(fitted))(texts).tolist() == own.tolist()
    assert own.tolist() != model.tokenize(texts).tolist()  # CLIP's vocabulary would give other ids


def test_a_hugging_face_text_tower(minilm, tmp_path):  # noqa: F811
    saved = hf_clip(minilm)
    model.save(saved, tmp_path)
    texts = ["A dog runs along the beach.", "Stock markets fell sharply today."]
    ids = saved.tokenizer(texts)
    assert kubeclip.get_tokenizer(tmp_path)(texts).tolist() == ids.tolist()
    clip, _, _ = kubeclip.create_model_and_transforms(tmp_path)
    assert torch.allclose(clip.encode_text(ids), saved.encode_text(ids), atol=1e-6)


def test_zero_shot_is_the_benchmarks_classifier(fitted, tmp_path):
    clip = model.load(fitted)
    labels, templates = ["red triangle", "blue square"], ["a photo of a {c}.", "a drawing of a {c}."]
    paths = []
    for i, image in enumerate(IMAGES):
        image.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    probs = kubeclip.zero_shot(clip, paths, labels, templates)
    encoder = TorchEncoder(clip)
    classifier = text_classifier(encoder, labels, templates).ensemble
    images = encoder.encode_images([p.read_bytes() for p in paths])
    expected = (clip.logit_scale.exp() * images @ classifier.T).softmax(dim=-1)
    assert probs.shape == (3, 2) and torch.allclose(probs, expected, atol=1e-5)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="only a bare"):
        kubeclip.zero_shot(clip, paths, labels, ["{c:>100000}"])
