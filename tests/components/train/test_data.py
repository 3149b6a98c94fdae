"""The training data stream: every sample once per epoch over all processes and loader workers, and
a resumed stream that continues exactly where the interrupted one was; the crop augmentation's scale;
mirroring that keeps each caption true of its image; word dropout; second captions for the text SSL."""

import itertools

import pytest
import torch

from kubeclip.components.prepare import step as prepare
from kubeclip.components.datasets import shard_urls
from kubeclip.components.train import data
from kubeclip.model.tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare.prepare_synthetic(prepare.SyntheticOptions(out=str(out), samples=48, image_size=32, shard_size=8,
                                                       val_fraction=0, eval_samples_per_class=1, workers=1))
    return shard_urls(str(out))


def first_batch(shards, batch_size: int = 48, **augmentation) -> tuple[torch.Tensor, torch.Tensor]:
    """The first (images, token ids) of a seeded single-process stream with these augmentation settings."""
    stream = data.Stream(shards, batch_size, image_size=32, context_length=77, seed=3, **augmentation)
    return next(iter(data.loader(stream, workers=0)))


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
    def crops(crop_scale: float) -> torch.Tensor:
        return first_batch(shards, batch_size=8, crop_scale=crop_scale)[0]

    assert torch.equal(crops(0.9), crops(0.9))  # the crops are seeded per sample
    wide, tight = crops(0.9), crops(0.25)
    assert not torch.equal(wide, tight)
    # a crop keeping a quarter of the image is a zoom: neighbouring pixels differ less than in the wider crops
    assert tight.diff(dim=-1).abs().mean() < wide.diff(dim=-1).abs().mean()


def test_mirror_caption_swaps_the_sides_and_nothing_else():
    assert data.mirror_caption("A dog on the Left, a cat to the right of it.") == \
        "A dog on the Right, a cat to the left of it."
    assert data.mirror_caption("LEFT turn, then rightwards past the bright leftovers") == \
        "RIGHT turn, then rightwards past the bright leftovers"


def test_mirrored_samples_get_the_mirrored_caption(shards):
    (plain, plain_ids), (mixed, mixed_ids) = first_batch(shards, hflip=False), first_batch(shards, hflip=True)
    tokenizer = default_tokenizer()
    mirrored, sides_swapped = 0, 0
    for image, ids, mixed_image, mixed_caption in zip(plain, plain_ids, mixed, mixed_ids):
        caption = tokenizer.decode([i for i in ids.tolist() if i])
        if torch.equal(mixed_image, image):
            assert torch.equal(mixed_caption, ids)  # same crop, same caption
            continue
        mirrored += 1
        assert torch.equal(mixed_image, image.flip(-1))
        assert tokenizer.decode([i for i in mixed_caption.tolist() if i]) == data.mirror_caption(caption)
        sides_swapped += data.mirror_caption(caption) != caption
    assert 12 <= mirrored <= 36 and sides_swapped  # about half; the synthetic captions name sides


def test_word_dropout_drops_whole_words_and_keeps_the_images(shards):
    (images, ids), (same_images, dropped_ids) = (first_batch(shards, word_dropout=p) for p in (0.0, 0.3))
    assert torch.equal(images, same_images)  # the crops do not depend on the captions
    assert torch.equal(first_batch(shards, word_dropout=0.3)[1], dropped_ids)  # seeded per sample: a resumed run drops the same words
    tokenizer = default_tokenizer()
    kept = total = 0
    for full, dropped in zip(ids, dropped_ids):
        words = tokenizer.decode([i for i in full.tolist() if i]).split()
        left = iter(words)
        remaining = tokenizer.decode([i for i in dropped.tolist() if i]).split()
        assert remaining and all(word in left for word in remaining)  # an ordered subset, never empty
        kept, total = kept + len(remaining), total + len(words)
    assert 0.55 < kept / total < 0.85  # about 70% of the words (punctuation goes with its word)


def test_second_captions_are_other_captions_of_the_first_photos(shards):
    images, ids = first_batch(shards, batch_size=8)
    same_images, with_seconds = first_batch(shards, batch_size=8, second_captions=3)
    assert torch.equal(images, same_images) and with_seconds.shape == (11, 77)
    assert torch.equal(with_seconds[:8], ids)  # the batch's own captions are those drawn without seconds
    stream = data.Stream(shards, 8, image_size=32, context_length=77, seed=3)
    photos = [files for _, files in itertools.islice(data.CaptionBatches(stream)._samples(0, 1), 3)]
    tokenizer = default_tokenizer()
    for i, files in enumerate(photos):
        options = [row.tolist() for row in tokenizer(data.captions(files), 77)]
        first, second = ids[i].tolist(), with_seconds[8 + i].tolist()
        assert first in options and second in options and second != first  # another of its own captions
