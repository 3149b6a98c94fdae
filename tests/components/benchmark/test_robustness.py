"""Corruptions: deterministic, and further from the clean image at each severity."""

import io

import numpy as np
import pytest
from PIL import Image

from kubeclip.components.benchmark.robustness import CORRUPTIONS, SEVERITIES, corrupt
from kubeclip.components.prepare.synthetic import composition_sample


@pytest.fixture(scope="module")
def clean() -> bytes:
    buffer = io.BytesIO()
    composition_sample(0, size=64).image.save(buffer, "PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_increases_the_damage(clean, name):
    damage = [np.abs(pixels(corrupt(clean, 7, name=name, severity=s)) - pixels(clean)).mean() for s in SEVERITIES]
    assert damage[0] > 0
    assert damage[-1] > damage[0]
    if name != "jpeg":  # on flat drawings, JPEG's error is not monotone in its quality (18 can beat 15)
        assert all(b > a for a, b in zip(damage[:-1], damage[1:], strict=True)), damage


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_is_deterministic_and_keeps_the_size(clean, name):
    once, twice = corrupt(clean, 3, name=name, severity=3), corrupt(clean, 3, name=name, severity=3)
    assert once == twice
    assert Image.open(io.BytesIO(once)).size == Image.open(io.BytesIO(clean)).size
