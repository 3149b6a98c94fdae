"""Synthetic caption shards that the training tests share (96 scenes at 32 px, shards of 16)."""

import pytest

from kubeclip.components.prepare import step as prepare


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("data")
    prepare.prepare_synthetic(prepare.SyntheticOptions(out=str(out), samples=96, image_size=32, shard_size=16,
                                                       eval_samples_per_class=1, workers=1))
    return str(out)
