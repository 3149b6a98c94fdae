"""Decoding untrusted image bytes. What an image may expand into is checked from its header alone, before
any pixel is decoded: its bytes, its format (an allow-list of decoders), its pixels, its aspect ratio and
the pixels it becomes once its shorter side is scaled to the model's input size. Large JPEGs then decode
at a reduced scale (never below twice the model's input, so the model sees the same pixels).

Copied as it is into the Triton repository's preprocessing model and imported by the transformer: numpy
and PIL only.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """The bytes are not an image this server accepts; the message says why, for the client."""


@dataclass(frozen=True)
class ImagePolicy:
    """The one source of the image limits: the transformer's flags and the Triton models' parameters."""
    max_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_aspect_ratio: float = 20.0
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")

    def resized_pixels(self, width: int, height: int, size: int) -> int:
        """Pixels after the shorter side is scaled to `size` (before the centre crop)."""
        short, long = min(width, height), max(width, height)
        return size * max(size, math.ceil(size * long / short))


def open_checked(data: bytes, policy: ImagePolicy, size: int | None = None) -> Image.Image:
    """The image with only its header read, or ImageError for empty, oversized, unlisted or malformed data.
    With `size`, the pixels after the model's resize are checked too."""
    if not data:
        raise ImageError("empty image")
    if len(data) > policy.max_bytes:
        raise ImageError(f"{len(data) / 2**20:.1f} MiB is over the limit of {policy.max_bytes / 2**20:.1f} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limits below decide
            image = Image.open(io.BytesIO(data), formats=policy.formats)
    except UnidentifiedImageError:
        raise ImageError(f"not an image in an accepted format ({', '.join(policy.formats)})") from None
    except Exception as e:  # Pillow raises many types for crafted headers
        raise ImageError(f"not a decodable image ({str(e)[:200]})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{width}x{height} has no pixels")
    if width * height > policy.max_pixels:
        raise ImageError(f"{width}x{height} = {width * height / 1e6:.1f} megapixels is over the limit of "
                         f"{policy.max_pixels / 1e6:.1f} megapixels")
    if max(width, height) / min(width, height) > policy.max_aspect_ratio:
        raise ImageError(f"{width}x{height}: an aspect ratio over the limit of {policy.max_aspect_ratio:g}:1")
    if size is not None and policy.resized_pixels(width, height, size) > policy.max_pixels:
        raise ImageError(f"{width}x{height} would grow to {policy.resized_pixels(width, height, size):,} pixels "
                         f"at the model's input size {size}")
    return image


def decode(data: bytes, policy: ImagePolicy, size: int) -> Image.Image:
    """A fully decoded image, or ImageError for what `open_checked` refuses and for corrupt data. A JPEG
    whose shorter side is at least 4x `size` decodes at 1/2..1/8 scale in the DCT domain, keeping its
    shorter side at least 2x `size`."""
    image = open_checked(data, policy, size)
    width, height = image.size
    if image.format == "JPEG" and min(width, height) >= 4 * size:
        scale = 2 * size / min(width, height)
        image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        image.load()
    except Exception as e:
        raise ImageError(f"corrupt or truncated {image.format} image ({str(e)[:200]})") from None
    return image
