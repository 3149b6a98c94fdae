"""The CLIP network: its public API, initialisation, configs and image transforms."""

import math

import pytest
import torch
from PIL import Image

from kubeclip import model
from kubeclip.model.transformer import QuickGELU
from kubeclip.model.transforms import MEAN, STD


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_forward_returns_normalised_features_and_the_scale(name):
    clip = model.build(name).eval()
    images = torch.randn(3, 3, clip.image_size, clip.image_size)
    ids = model.tokenize(["a red circle", "two blue squares", ""])
    with torch.no_grad():
        out = clip(images, ids)
    image_features, text_features, scale = out  # indexable like open_clip's tuple
    assert out.image_features is image_features and out[2] is scale
    assert image_features.shape == text_features.shape == (3, clip.config.embed_dim)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(3))
    assert torch.allclose(text_features.norm(dim=-1), torch.ones(3))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert torch.allclose(clip.encode_image(images, normalize=True), image_features, atol=1e-6)


def test_parameter_counts_match_openai():
    # the published sizes of OpenAI's ViT-B/32 and RN50 (text tower included)
    with torch.device("meta"):
        for name, count in (("ViT-B-32", 151_277_313), ("RN50", 102_007_137)):
            assert sum(p.numel() for p in model.build(name).parameters()) == count


def test_initialisation_follows_openai():
    torch.manual_seed(0)
    clip = model.build("tiny-rn")
    assert clip.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert clip.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(block.bn3.weight.eq(0).all() for layer in (clip.visual.layer1, clip.visual.layer4) for block in layer)
    width, layers = clip.config.text.width, clip.config.text.layers
    c_proj = clip.transformer.resblocks[0].mlp.c_proj.weight
    assert c_proj.std().item() == pytest.approx(width ** -0.5 * (2 * layers) ** -0.5, rel=0.05)


def test_text_is_causal_and_pools_at_the_end_token():
    clip = model.build("tiny-vit").eval()
    ids = model.tokenize(["a red circle on grey", "a much longer caption: a red circle on a grey background"])
    short_end, long_end = ids.argmax(dim=-1).tolist()
    changed = ids.clone()
    changed[0, short_end + 1: long_end + 1] = 7  # tokens after the end token cannot reach it through a causal mask
    with torch.no_grad():
        assert torch.allclose(clip.encode_text(ids)[0], clip.encode_text(changed)[0], atol=1e-6)


def test_text_features_do_not_depend_on_padding_or_batch():
    # the tower drops the padding past the batch's longest text; a text alone, in a batch with a longer one,
    # or with a shorter context (less padding) must give the same features
    clip = model.build("tiny-vit").eval()
    texts = ["a dog", "two people riding bicycles along a river at sunset, with mountains in the distance"]
    with torch.no_grad():
        alone = torch.cat([clip.encode_text(model.tokenize([t])) for t in texts])
        batch = clip.encode_text(model.tokenize(texts))
        less_padding = clip.encode_text(model.tokenize(texts, context_length=32))
    assert torch.allclose(alone, batch, atol=1e-5) and torch.allclose(batch, less_padding, atol=1e-5)


def test_channels_last_changes_the_layout_not_the_features_or_the_weights():
    clip = model.build("tiny-rn").eval()
    images = torch.randn(4, 3, clip.image_size, clip.image_size)
    with torch.no_grad():
        before, weights = clip.encode_image(images), {k: v.clone() for k, v in clip.state_dict().items()}
        after = clip.channels_last().encode_image(images)
    assert clip.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(before, after, atol=1e-5)
    assert all(torch.equal(v, clip.state_dict()[k]) for k, v in weights.items())


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    clip = model.build(name)
    images, ids = torch.randn(2, 3, 64, 64), model.tokenize(["a cat", "a dog"])

    def grads():
        clip.zero_grad()
        image_features, text_features, scale = clip(images, ids)
        (scale * image_features @ text_features.T).logsumexp(dim=1).sum().backward()
        return {k: p.grad.clone() for k, p in clip.named_parameters() if p.grad is not None}

    clip.eval()  # BatchNorm statistics must not move between the two passes
    plain = grads()
    clip.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_quickgelu_is_selectable():
    assert isinstance(model.build("tiny-vit-quickgelu").transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(model.build("tiny-vit").transformer.resblocks[0].mlp.gelu, torch.nn.GELU)


def test_available_models_lists_every_named_config():
    names = model.available_models()
    for base in ("tiny-vit", "tiny-rn", "RN50", "RN101", "ViT-B-32", "ViT-B-16", "ViT-L-14"):
        assert base in names and f"{base}-quickgelu" in names
        assert model.get_config(f"{base}-quickgelu") == model.get_config(base).__class__(
            **{**model.get_config(base).__dict__, "quick_gelu": True})


def test_user_config_files_and_clear_errors(tmp_path):
    path = tmp_path / "my-model.json"
    path.write_text('{"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},'
                    ' "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}')
    clip = model.build(str(path))
    assert clip.config.embed_dim == 32 and clip.visual.transformer.resblocks[0].attn.heads == 1
    with pytest.raises(ValueError, match="unknown model 'nope'.*tiny-vit"):
        model.build("nope")
    with pytest.raises(ValueError, match="unsupported CLIP config keys.*timm_model_name"):
        model.build({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {}, "timm_model_name": "x"})


def test_image_transforms():
    image = Image.new("RGB", (200, 100), (int(MEAN[0] * 255), int(MEAN[1] * 255), int(MEAN[2] * 255)))
    eval_transform = model.image_transform(64)
    x = eval_transform(image)
    assert x.shape == (3, 64, 64) and x.abs().max() < 0.02  # the mean colour normalises to ~0
    white = eval_transform(Image.new("L", (64, 64), 255))  # grey-scale input becomes RGB
    assert torch.allclose(white[:, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]), atol=1e-5)
    striped = Image.frombytes("L", (96, 96), bytes((i % 96) * 2 for i in range(96 * 96)))
    train_transform = model.image_transform(64, train=True)
    torch.manual_seed(0)
    crops = [train_transform(striped) for _ in range(4)]
    assert all(c.shape == (3, 64, 64) for c in crops)
    assert not all(torch.equal(crops[0], c) for c in crops[1:])  # random crops differ
    assert torch.equal(eval_transform(striped), eval_transform(striped))
