"""SLIP (--ssl-scale) and the captions' contrast (--text-ssl-captions): the views, the SimCLR loss, and training
that resumes and keeps the model a plain CLIP."""

import json
from dataclasses import replace

import pytest
import torch

from kubeclip import model
from kubeclip.components.datasets import shard_urls
from kubeclip.components.train.checkpoints import Checkpoints, load_state
from kubeclip.components.train.data import CaptionBatches, Stream
from kubeclip.components.train.slip import Slip, two_views
from kubeclip.components.train.step import TrainOptions, train
from kubeclip.model.losses import SimCLRLoss
from kubeclip.model.preprocess import MEAN, STD

BASE = dict(model="tiny-vit", batch_size=8, workers=0, shuffle_buffer=16, log_every=1, warmup=2, checkpoint_every=2,
            ssl_scale=1.0, ssl_images=6)


def pixels(images: torch.Tensor) -> torch.Tensor:
    return images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_two_views_are_different_true_crops_of_each_image_and_follow_the_seed():
    torch.manual_seed(0)
    images = (torch.rand(4, 3, 32, 32) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    views = two_views(images, torch.Generator().manual_seed(1))
    assert views.shape == (8, 3, 32, 32)
    seen = pixels(views)
    assert seen.min() >= -1e-5 and seen.max() <= 1 + 1e-5  # still images, not noise
    assert all((views[2 * i] - views[2 * i + 1]).abs().mean() > 0.01 for i in range(4))  # twins differ
    assert torch.equal(two_views(images, torch.Generator().manual_seed(1)), views)  # a resumed run draws the same

    flat = torch.zeros(1, 3, 32, 32)  # a uniform image stays uniform: views crop and recolour, never add detail
    assert pixels(two_views(flat)).std(dim=(2, 3)).max() < 1e-4


def test_simclr_loss_rewards_finding_the_twin_view():
    torch.manual_seed(0)
    pairs = torch.randn(8, 16).repeat_interleave(2, dim=0)  # rows 2i and 2i+1 identical
    loss = SimCLRLoss()
    assert loss(pairs) < 0.5 < loss(torch.randn(16, 16))
    shuffled = pairs[torch.tensor([(i + 2) % 16 if i % 2 else i for i in range(16)])]  # twins: different images
    assert loss(shuffled) > loss(torch.randn(16, 16))
    assert SimCLRLoss(0.2)(pairs) > loss(pairs)  # a warmer temperature asks less confidence of the twins


def test_a_slip_run_resumes_to_the_same_weights_and_saves_a_plain_clip(shards, tmp_path):
    opts = TrainOptions(data=shards, out=str(tmp_path / "whole"), steps=4, accum_steps=2, **BASE)
    train(opts)
    resumed = tmp_path / "resumed"
    train(replace(opts, out=str(resumed), steps=2))
    train(replace(opts, out=str(resumed), resume="latest"))

    whole, again = model.load(tmp_path / "whole"), model.load(resumed)
    assert set(whole.state_dict()) == set(model.CLIP(whole.config).state_dict())  # no head in the model
    for name, weight in whole.state_dict().items():
        assert torch.allclose(weight, again.state_dict()[name], atol=1e-6), name
    _, state = load_state(tmp_path / "whole" / "checkpoints" / "step-00000004")
    _, state_again = load_state(resumed / "checkpoints" / "step-00000004")
    for name, weight in state["slip_head"].items():  # the head went on training where it stopped
        assert torch.allclose(weight.float(), state_again["slip_head"][name].float(), atol=1e-6), name


def test_the_simclr_loss_falls_as_slip_trains(shards, tmp_path):
    """The self-supervised task is learnt: on a fixed batch, the trained tower and head find twins better than at
    the start."""
    opts = TrainOptions(data=shards, out=str(tmp_path / "run"), steps=30, lr=2e-3, **BASE)
    torch.manual_seed(opts.seed)
    start = Slip(model.CLIP(model.get_config("tiny-vit")), 1.0, 16)  # train() builds the same from the seed
    train(opts)
    weights, state = load_state(Checkpoints(opts.out).latest())
    trained = Slip(model.CLIP(model.get_config("tiny-vit")), 1.0, 16)
    trained.clip.load_state_dict(weights)
    trained.head.load_state_dict(state["slip_head"])

    images, ids = next(iter(CaptionBatches(Stream(shard_urls(shards, "train"), 16, 64, 77, seed=7))))
    losses = []
    for slip in (start, trained):
        slip.train()
        slip.start_step(8)  # the same views for both
        losses.append(slip(images, ids).ssl_loss.item())
    assert losses[1] < losses[0], losses


def test_the_captions_loss_falls_as_the_text_tower_learns(shards, tmp_path):
    """On a ResNet tower (no views: the SSL loss is the captions' alone), captions of one photo find each other
    better after training than at the start."""
    opts = TrainOptions(data=shards, out=str(tmp_path / "run"), steps=30, lr=2e-3, **{**BASE, "model": "tiny-rn"})
    torch.manual_seed(opts.seed)
    start = Slip(model.CLIP(model.get_config("tiny-rn")), 0.0, 16)  # train() builds the same from the seed
    train(opts)
    trained = Slip(model.CLIP(model.get_config("tiny-rn")), 0.0, 16)
    trained.clip.load_state_dict(load_state(Checkpoints(opts.out).latest())[0])

    stream = Stream(shard_urls(shards, "train"), 16, 64, 77, seed=7, second_captions=16)
    images, ids = next(iter(CaptionBatches(stream)))
    losses = [slip.train()(images, ids).ssl_loss.item() for slip in (start, trained)]
    assert losses[1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("overrides, ssl_scale, text_ssl_captions",
                         [(dict(model="tiny-rn"), 0.0, 64), (dict(lock_image=True), 0.0, 64),
                          (dict(lock_text=True), 0.0, 0), (dict(text_ssl_scale=0.0), 1.0, 0)])
def test_each_ssl_stays_off_where_its_tower_does_not_learn(shards, tmp_path, overrides, ssl_scale, text_ssl_captions):
    """The views need a ViT image tower learning beside a text tower; the captions' contrast, a learning text tower."""
    out = tmp_path / "run"
    train(TrainOptions(data=shards, out=str(out), steps=1, **{**BASE, **overrides}))
    _, state = load_state(Checkpoints(str(out)).latest())
    assert ("slip_head" in state) == bool(ssl_scale)
    parameters = json.loads((out / "lineage.json").read_text())["parameters"]
    assert (parameters["ssl_scale"], parameters["text_ssl_captions"]) == (ssl_scale, text_ssl_captions)


def test_resuming_with_slip_switched_says_how_to_resume(shards, tmp_path):
    opts = TrainOptions(data=shards, out=str(tmp_path / "run"), steps=1, **{**BASE, "ssl_scale": 0.0})
    train(opts)
    with pytest.raises(SystemExit, match="trained without SLIP and this run is set up with it"):
        train(replace(opts, steps=2, ssl_scale=1.0, resume="latest"))


@pytest.mark.parametrize("overrides, message", [(dict(ssl_scale=-1.0), "--ssl-scale must be 0"),
                                                (dict(ssl_images=0), "--ssl-images 1 or more"),
                                                (dict(ssl_temperature=0.0), "--ssl-temperature must be above 0"),
                                                (dict(text_ssl_captions=-1), "--text-ssl-captions and --text-ssl-scale "
                                                                             "must be 0")])
def test_out_of_range_slip_options_are_refused(tmp_path, overrides, message):
    with pytest.raises(SystemExit, match=message):
        train(TrainOptions(data="unused", out=str(tmp_path / "run"), steps=1, **{**BASE, **overrides}))
