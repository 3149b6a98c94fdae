"""Reading, validating, resizing and re-encoding one image; every failure is a `Rejected` with a reason.

Runs in worker processes, so everything here is a plain function of picklable arguments.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
from PIL import Image, ImageOps

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


class Rejected(Exception):
    """A record that cannot be used; `reason` is a short machine-readable key, `detail` says what to fix."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail

    def __reduce__(self):  # workers send it back pickled; the default would call Rejected(message)
        return Rejected, (self.reason, self.detail)


@dataclass(frozen=True)
class ImageLimits:
    image_size: int = 224  # the shorter side is brought down to this; images are never upscaled
    min_size: int = 8  # shorter side below this is rejected
    max_pixels: int = 40_000_000  # refuses decompression bombs before decoding
    image_format: str = "jpg"
    quality: int = 90


@dataclass(frozen=True)
class Encoded:
    data: bytes
    width: int
    height: int


def safe_join(root: str, name: str) -> str:
    """`root/name`, refusing names that leave `root` (`..`, absolute paths, symlinks pointing out)."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    # A colon is fine inside a name ("12:30.jpg"); URLs, fsspec chains and drive letters ("C:") are not.
    drive = len(name) > 1 and name[1] == ":" and name[0].isascii() and name[0].isalpha()
    url_like = "://" in name or "::" in name or drive
    if not name or name.startswith(("/", "\\")) or ".." in parts or url_like or "\x00" in name:
        raise Rejected("unsafe_path", f"image path {name!r} must be relative to the images root: no '..', "
                                      "leading '/', URL, drive letter or NUL byte")
    if "://" in root:
        return root.rstrip("/") + "/" + "/".join(parts)
    path = os.path.join(root, *parts)
    # realpath costs a system call per path component: take it only where a component is a link
    links = any(os.path.islink(os.path.join(root, *parts[:i + 1])) for i in range(len(parts)))
    if links and os.path.commonpath([os.path.realpath(path), _realpath(root)]) != _realpath(root):
        raise Rejected("unsafe_path", f"{name!r} is a symlink leading out of the images root {root}")
    return path


@functools.lru_cache(maxsize=64)
def _realpath(root: str) -> str:
    return os.path.realpath(root)


def read_file(root: str, name: str) -> bytes:
    path = safe_join(root, name)
    try:
        with (fsspec.open(path, "rb") if "://" in path else open(path, "rb")) as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise Rejected("missing_image", f"{name}: no such image under {root}") from e
    except PermissionError as e:
        raise Rejected("missing_image", f"{name}: not readable ({e})") from e
    except OSError as e:  # a name no file can have; other errors (a flaky object store) stop the run
        if e.errno not in (errno.ENAMETOOLONG, errno.ELOOP):
            raise
        raise Rejected("missing_image", f"{name}: cannot be opened under {root} ({e.strerror})") from e


def decode(data: bytes, limits: ImageLimits) -> Image.Image:
    """An RGB image, or Rejected: empty, undecodable or truncated, too large in pixels, too small."""
    if not data:
        raise Rejected("unreadable_image", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # --max-pixels decides, below, before any pixel is decoded; Pillow's own warning limit (89M
            # pixels) would otherwise override a larger --max-pixels. Its hard limit (2x that) still holds.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise Rejected("too_many_pixels", f"{width}x{height} is over the {limits.max_pixels:,}-pixel "
                                                  "limit (--max-pixels); decompression bombs look like this")
            _draft(image, limits.image_size)
            image.load()
    except Image.DecompressionBombError as e:
        raise Rejected("too_many_pixels", str(e)) from e
    except Rejected:
        raise
    except Exception as e:  # Pillow raises many types for broken files
        raise Rejected("unreadable_image", f"cannot decode: {e}") from e
    if min(width, height) < limits.min_size:
        raise Rejected("too_small", f"{width}x{height} has a side below --min-size {limits.min_size}")
    try:
        return to_rgb(ImageOps.exif_transpose(image, in_place=True) or image)
    except Exception as e:  # a broken EXIF block or a mode Pillow cannot convert: one bad image, not a failed run
        raise Rejected("unreadable_image", f"cannot convert {image.mode} to RGB: {e}") from e


def _draft(image: Image.Image, image_size: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (in the DCT domain, where it is nearly free) while its
    shorter side stays at least `image_size`: decoding and resizing then touch up to 64 times fewer pixels.
    The whole stream is still decoded, so a truncated or corrupt file is still found."""
    width, height = image.size
    if image.format == "JPEG" and min(width, height) >= 2 * image_size:
        scale = image_size / min(width, height)
        image.draft(None, (max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: transparency composited over white, 16-bit grey scaled down rather than clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = image.convert("F")  # first: getextrema() does not take big-endian I;16B
        scale = 255 / 65535 if image.getextrema()[1] > 255 else 1.0
        image = image.point(lambda v: v * scale).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def resize(image: Image.Image, image_size: int) -> Image.Image:
    """Shorter side down to `image_size`, aspect kept; never upscaled."""
    width, height = image.size
    short = min(width, height)
    if short <= image_size:
        return image
    scale = image_size / short
    size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def encode(image: Image.Image, limits: ImageLimits) -> Encoded:
    buffer = io.BytesIO()
    fmt = FORMATS[limits.image_format]
    options = {"quality": limits.quality} if fmt in ("JPEG", "WEBP") else {"optimize": False}
    image.save(buffer, fmt, **options)
    return Encoded(buffer.getvalue(), *image.size)


def process(data: bytes, limits: ImageLimits) -> Encoded:
    """Validate, resize and re-encode raw image bytes."""
    return encode(resize(decode(data, limits), limits.image_size), limits)
