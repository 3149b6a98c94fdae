"""CLIP's eval preprocessing with Pillow and numpy alone, so the serving image (no torch) computes the very
same pixels: shorter side to `size` (bicubic), centre crop, RGB, CLIP mean and std.

This file is copied as it is into the Triton repository's preprocessing model: import only numpy and PIL.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
_MEAN = np.array(MEAN, dtype=np.float32)[:, None, None]
_STD = np.array(STD, dtype=np.float32)[:, None, None]


def eval_pixels(image: Image.Image, size: int) -> np.ndarray:
    """FP32 [3, size, size], equal bit for bit to torchvision's Resize, CenterCrop, ToTensor, Normalize."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short != size:  # torchvision leaves an image whose shorter side already fits untouched
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if width <= height else (new_long, size), Image.BICUBIC)
        width, height = image.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return (pixels - _MEAN) / _STD
