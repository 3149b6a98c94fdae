"""Large JPEGs decode at a reduced DCT scale: the same output size, nearly the same pixels, far less work,
and a truncated file is still rejected."""

import io

import numpy as np
import pytest
from PIL import Image

from kubeclip.components.prepare import images


def photo(size=(1600, 1200)) -> bytes:
    x, y = np.meshgrid(np.linspace(0, 1, size[0]), np.linspace(0, 1, size[1]))
    pixels = np.stack([x, y, (x + y) / 2], axis=-1) * 255 + np.random.default_rng(0).normal(0, 8, (*size[::-1], 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_a_large_jpeg_decodes_at_reduced_scale_to_nearly_the_same_pixels(monkeypatch):
    data, limits = photo(), images.ImageLimits(image_size=224)
    image = Image.open(io.BytesIO(data))
    images._draft(image, limits.image_size)
    image.load()
    assert image.size == (400, 300)  # 1/4 scale: the shorter side stays >= 224
    reduced = images.process(data, limits)
    monkeypatch.setattr(images, "_draft", lambda image, size: None)
    full = images.process(data, limits)
    assert (reduced.width, reduced.height) == (full.width, full.height) == (299, 224)
    a, b = (np.asarray(Image.open(io.BytesIO(e.data)), dtype=float) for e in (reduced, full))
    assert np.abs(a - b).mean() < 3


def test_a_truncated_large_jpeg_is_still_rejected():
    data = photo()
    with pytest.raises(images.Rejected, match="unreadable_image"):
        images.process(data[: len(data) // 2], images.ImageLimits(image_size=224))
