"""The eval preprocessing (PIL + numpy, shared with serving) equals torchvision's pipeline bit for bit."""

import io

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from kubeclip.model.preprocess import MEAN, STD, eval_pixels


def images():
    rng = np.random.default_rng(0)
    noise = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    yield noise(64, 64)
    yield noise(100, 37)
    yield noise(37, 100).convert("L")
    yield noise(333, 500).convert("RGBA")
    yield noise(65, 64).convert("P")
    buffer = io.BytesIO()
    noise(500, 333).convert("CMYK").save(buffer, "JPEG")
    yield Image.open(io.BytesIO(buffer.getvalue()))
    yield noise(10, 7)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_eval_pixels_equal_torchvision(size):
    reference = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                           T.Lambda(lambda image: image.convert("RGB")), T.ToTensor(), T.Normalize(MEAN, STD)])
    for image in images():
        assert np.array_equal(eval_pixels(image, size), reference(image).numpy())
