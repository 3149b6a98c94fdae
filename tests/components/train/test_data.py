"""The training data stream: every sample once per epoch over all processes and loader workers, and
a resumed stream that continues exactly where the interrupted one was; the crop augmentation's scale."""

import itertools

import pytest
import torch

from components.prepare import step as prepare
from components.datasets import shard_urls
from components.train import data


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare.prepare_synthetic(prepare.SyntheticOptions(out=str(out), samples=48, image_size=32, shard_size=8,
                                                       val_fraction=0, eval_samples_per_class=1, workers=1))
    return shard_urls(str(out))


def keys_of_one_epoch(shards, world_size: int, workers: int) -> list[str]:
    keys = []
    for rank in range(world_size):
        stream = data.Stream(shards, batch_size=1, image_size=32, context_length=77, rank=rank, world_size=world_size)
        batches = data.CaptionBatches(stream)
        for worker in range(workers):
            keys += [key for key, _ in itertools.islice(batches._epoch_samples(0, rank * workers + worker,
                                                                              world_size * workers), 1000)]
    return keys


@pytest.mark.parametrize("world_size,workers", [(1, 1), (2, 2), (4, 4)])  # 6 shards: more, then fewer than slots
def test_each_sample_once_per_epoch(shards, world_size, workers):
    keys = keys_of_one_epoch(shards, world_size, workers)
    assert len(shards) == 6 and len(keys) == 48 and len(set(keys)) == 48


def test_resumed_stream_continues_where_it_stopped(shards):
    stream = data.Stream(shards, batch_size=4, image_size=32, context_length=77, seed=5, shuffle_buffer=10)
    whole = list(itertools.islice(iter(data.loader(stream, workers=2)), 7))
    resumed = list(itertools.islice(iter(data.loader(stream, workers=2, skip_batches=3)), 4))
    assert len(resumed) == 4
    for (images_a, ids_a), (images_b, ids_b) in zip(whole[3:], resumed):
        assert torch.equal(images_a, images_b) and torch.equal(ids_a, ids_b)
    images, ids = whole[0]
    assert images.shape == (4, 3, 32, 32) and ids.shape == (4, 77)


def test_stream_runs_past_one_epoch(shards):
    stream = data.Stream(shards, batch_size=16, image_size=32, context_length=77, shuffle_buffer=1)
    assert len(list(itertools.islice(iter(data.loader(stream, workers=0)), 5))) == 5  # 80 samples from 48


def test_crop_scale_sets_how_much_of_each_image_a_training_crop_keeps(shards):
    def first_batch(crop_scale: float) -> torch.Tensor:
        stream = data.Stream(shards, batch_size=8, image_size=32, context_length=77, seed=3, crop_scale=crop_scale)
        return next(iter(data.loader(stream, workers=0)))[0]

    assert torch.equal(first_batch(0.9), first_batch(0.9))  # the crops are seeded per sample
    wide, tight = first_batch(0.9), first_batch(0.25)
    assert not torch.equal(wide, tight)
    # a crop keeping a quarter of the image is a zoom: neighbouring pixels differ less than in the wider crops
    assert tight.diff(dim=-1).abs().mean() < wide.diff(dim=-1).abs().mean()
