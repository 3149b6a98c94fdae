"""Robustness: the test split under common corruptions at increasing severity, scored by the zero-shot
classifier and the linear probe on the same embeddings.

The CLIP paper's "effective robustness" asks how much accuracy a model keeps under distribution shift
beyond what its clean accuracy predicts; it found zero-shot classifiers keep more than classifiers
fitted to the clean data. `retained` (mean corrupted accuracy / clean accuracy) for each puts that
comparison side by side for one model. Severity parameters follow ImageNet-C's, with blur and
pixelation scaled to the image side so they mean the same at 32 px and at 224 px.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image, ImageFilter

from kubeclip.components.benchmark.encoders import Encoder
from kubeclip.components.benchmark.features import embed_labelled
from kubeclip.components.benchmark.probe import Probe
from kubeclip.components.benchmark.zeroshot import TextClassifier, accuracy

SEVERITIES = (1, 2, 3, 4, 5)
_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)  # of the 0-1 pixel range
_BLUR_STD = (0.01, 0.02, 0.03, 0.045, 0.06)  # of the shorter side
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # distance from the mean grey kept
_JPEG_QUALITY = (25, 18, 15, 10, 7)
_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # side kept before scaling back up


def gaussian_noise(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) / 255
    noisy = pixels + rng.normal(0, _NOISE_STD[severity - 1], pixels.shape)
    return _image(noisy)


def gaussian_blur(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(_BLUR_STD[severity - 1] * min(image.size)))


def contrast(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) / 255
    mean = pixels.mean()
    return _image((pixels - mean) * _CONTRAST[severity - 1] + mean)


def jpeg(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=_JPEG_QUALITY[severity - 1])
    return Image.open(buffer).convert("RGB")


def pixelate(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    factor = _PIXELATE[severity - 1]
    small = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))), Image.BOX)
    return small.resize(image.size, Image.NEAREST)


CORRUPTIONS: dict[str, Callable[[Image.Image, int, np.random.Generator], Image.Image]] = {
    "gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur, "contrast": contrast, "jpeg": jpeg,
    "pixelate": pixelate}


def corrupt(data: bytes, index: int, *, name: str, severity: int, seed: int = 0) -> bytes:
    """An encoded image, corrupted and re-encoded losslessly (PNG); the noise of image `index` is
    seeded by (seed, severity, index), so reruns see the same pixels."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    rng = np.random.default_rng([seed, severity, index])
    buffer = io.BytesIO()
    CORRUPTIONS[name](image, severity, rng).save(buffer, "PNG")
    return buffer.getvalue()


def evaluate(encoder: Encoder, root: str, text: TextClassifier, probe: Probe | None, clean: dict[str, float],
             corruptions: list[str], severities: list[int], split: str = "test", max_images: int | None = None,
             seed: int = 0) -> dict:
    """Top-1 per corruption and severity for zero-shot (and the probe when given), their means over
    all corruptions and severities, and the share of clean accuracy each keeps."""
    unknown = set(corruptions) - set(CORRUPTIONS)
    if unknown or not set(severities) <= set(SEVERITIES):
        raise SystemExit(f"robustness: corruptions are {sorted(CORRUPTIONS)} and severities {list(SEVERITIES)}; "
                         f"got {corruptions} and {severities}")
    methods = ["zeroshot"] + (["linear_probe"] if probe is not None else [])
    table: dict[str, dict[str, dict[str, float]]] = {}
    for name in corruptions:
        table[name] = {method: {} for method in methods}
        for severity in severities:
            features, labels = embed_labelled(encoder, root, split, max_images, desc=f"{name} {severity}",
                                              corrupt=partial(corrupt, name=name, severity=severity, seed=seed))
            table[name]["zeroshot"][str(severity)] = accuracy((features @ text.ensemble.T).argmax(dim=1), labels)
            if probe is not None:
                table[name]["linear_probe"][str(severity)] = accuracy(probe.predict(features), labels)
    mean = {m: float(np.mean([v for entry in table.values() for v in entry[m].values()])) for m in methods}
    return {"severities": list(severities), "clean": {m: clean[m] for m in methods}, "corruptions": table,
            "mean": mean, "retained": {m: mean[m] / clean[m] if clean[m] else 0.0 for m in methods}}


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8), "RGB")
