"""Decoding untrusted image bytes for the preprocessing model. Limits on bytes and pixels are checked
before decoding, from the header alone, so an oversized or crafted file costs nothing."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

class ImageError(ValueError):
    """The bytes are not an image this server accepts; the message says why, for the client."""


def open_checked(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """The image with only its header read, or ImageError for empty, oversized or unknown data."""
    if not data:
        raise ImageError("empty image")
    if len(data) > max_bytes:
        raise ImageError(f"{len(data) / 2**20:.1f} MiB is over the limit of {max_bytes / 2**20:.1f} MiB")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not a decodable image (unknown format)") from None
    except Exception as e:  # Pillow raises many types for crafted headers
        raise ImageError(f"not a decodable image ({e})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{width}x{height} = {width * height / 1e6:.1f} megapixels is over the limit of "
                         f"{max_pixels / 1e6:.1f} megapixels")
    return image


def decode(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """A fully decoded image, or ImageError for empty, oversized, unknown or corrupt data."""
    image = open_checked(data, max_bytes, max_pixels)
    try:
        image.load()
    except Exception as e:
        raise ImageError(f"corrupt or truncated {image.format} image ({e})") from None
    return image
