"""The text classifier is built once per (model, classes, templates) and read back from the cache after."""

import torch

from kubeclip import model
from kubeclip.components.benchmark.cache import ClassifierCache
from kubeclip.components.benchmark.encoders import TorchEncoder
from kubeclip.components.benchmark.zeroshot import classifier, text_classifier

CLASSES, TEMPLATES = ["cat", "dog", "red circle"], ["a photo of a {c}.", "a drawing of a {c}."]


class CountingEncoder:
    """The Encoder interface over a real TorchEncoder, counting the texts it is asked to encode."""

    def __init__(self, inner: TorchEncoder):
        self.inner, self.texts = inner, 0

    def encode_images(self, images: list[bytes]) -> torch.Tensor:
        return self.inner.encode_images(images)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.texts += len(texts)
        return self.inner.encode_texts(texts)


def encoder(seed: int = 0) -> CountingEncoder:
    torch.manual_seed(seed)
    return CountingEncoder(TorchEncoder(model.build("tiny-vit")))


def test_built_once_then_read_back(tmp_path):
    counting, cache = encoder(), ClassifierCache(tmp_path, "model-a")
    built = text_classifier(counting, CLASSES, TEMPLATES, cache)
    assert counting.texts == len(CLASSES) * len(TEMPLATES)
    again = text_classifier(counting, CLASSES, TEMPLATES, cache)
    assert counting.texts == len(CLASSES) * len(TEMPLATES)  # nothing encoded the second time
    assert torch.equal(built.ensemble, again.ensemble) and torch.equal(built.single, again.single)
    assert torch.allclose(built.ensemble, classifier(counting, CLASSES, TEMPLATES))
    assert torch.allclose(built.ensemble.norm(dim=-1), torch.ones(len(CLASSES)))
    assert torch.allclose(built.single, classifier(counting, CLASSES, TEMPLATES[:1]))


def test_key_changes_with_model_classes_and_templates(tmp_path):
    cache = ClassifierCache(tmp_path, "model-a")
    keys = {cache.key(CLASSES, TEMPLATES), cache.key(CLASSES[:2], TEMPLATES), cache.key(CLASSES, TEMPLATES[:1]),
            cache.key(list(reversed(CLASSES)), TEMPLATES), ClassifierCache(tmp_path, "model-b").key(CLASSES, TEMPLATES)}
    assert len(keys) == 5
    counting = encoder()
    text_classifier(counting, CLASSES, TEMPLATES, cache)
    text_classifier(counting, CLASSES, TEMPLATES, ClassifierCache(tmp_path, "model-b"))
    assert counting.texts == 2 * len(CLASSES) * len(TEMPLATES)
    assert sorted(p.suffix for p in (tmp_path / "classifiers").iterdir()) == [".safetensors", ".safetensors"]
