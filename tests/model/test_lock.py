"""Locking towers (LiT): exactly the right parameters freeze, `unlock_last` frees the top blocks and what
follows them, and a frozen BatchNorm keeps its statistics while the rest trains."""

import pytest
import torch

from kubeclip import model


def trainable(clip) -> set[str]:
    return {name for name, p in clip.named_parameters() if p.requires_grad}


def everything(clip) -> set[str]:
    return {name for name, _ in clip.named_parameters()}


def test_locked_vit_image_tower_freezes_all_of_visual():
    clip = model.build("tiny-vit")
    clip.lock_image_tower()
    assert trainable(clip) == {n for n in everything(clip) if not n.startswith("visual.")}


def test_unlock_last_frees_the_top_vit_blocks_and_the_head():
    clip = model.build("tiny-vit")  # two blocks
    clip.lock_image_tower(unlocked_blocks=1)
    visual = {n for n in trainable(clip) if n.startswith("visual.")}
    assert visual == {n for n in everything(clip) if n.startswith(("visual.transformer.resblocks.1.",
                                                                    "visual.ln_post.", "visual.proj"))}
    clip.lock_image_tower(unlocked_blocks=2)
    assert {n for n in trainable(clip) if n.startswith("visual.")} == visual | {
        n for n in everything(clip) if n.startswith("visual.transformer.resblocks.0.")}
    with pytest.raises(ValueError, match="has 2"):
        clip.lock_image_tower(unlocked_blocks=3)


def test_resnet_unlock_counts_bottlenecks_and_frozen_batchnorm_stays_in_eval():
    clip = model.build("tiny-rn")
    clip.lock_image_tower(unlocked_blocks=1)
    last_stage = max(int(n.split(".")[2]) for n in everything(clip) if n.startswith("visual.layer4."))
    expected = {n for n in everything(clip) if n.startswith((f"visual.layer4.{last_stage}.", "visual.attnpool."))}
    assert {n for n in trainable(clip) if n.startswith("visual.")} == expected
    clip.train()
    assert not clip.visual.bn1.training and not clip.visual.layer1[0].bn1.training  # frozen: statistics frozen too
    assert clip.visual.layer4[last_stage].bn1.training  # unlocked: trains as usual
    before = clip.visual.bn1.running_mean.clone()
    clip.encode_image(torch.randn(2, 3, clip.image_size, clip.image_size))
    assert torch.equal(clip.visual.bn1.running_mean, before)


def test_locked_clip_text_tower_freezes_up_to_its_projection():
    clip = model.build("tiny-vit")
    clip.lock_text_tower()
    assert trainable(clip) == {n for n in everything(clip) if n.startswith("visual.")} | {"logit_scale"}
    assert clip.text_tower_frozen
    clip.lock_text_tower(unlocked_blocks=1)
    assert trainable(clip) - {n for n in everything(clip) if n.startswith("visual.")} == {"logit_scale"} | {
        n for n in everything(clip) if n.startswith(("transformer.resblocks.1.", "ln_final.", "text_projection"))}
    assert not clip.text_tower_frozen


def test_locked_hf_text_tower_keeps_its_new_projection_trainable():
    from kubeclip.model.config import BertConfig, HFTextConfig

    bert = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    cfg = model.get_config("tiny-vit")
    clip = model.CLIP(type(cfg)(embed_dim=cfg.embed_dim, vision=cfg.vision, text=HFTextConfig("unused", bert)))
    clip.lock_text_tower()
    text = {n for n in trainable(clip) if n.startswith("text.")}
    assert text == {"text.proj.weight"} and clip.text_tower_frozen
    clip.lock_text_tower(unlocked_blocks=2)
    assert {n for n in trainable(clip) if n.startswith("text.")} == {"text.proj.weight"} | {
        n for n in everything(clip) if n.startswith(("text.transformer.encoder.layer.1.",
                                                      "text.transformer.encoder.layer.2."))}
    assert not clip.text_tower_frozen
