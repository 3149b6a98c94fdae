"""Reading prepared samples: every caption of an image counts, wherever it is stored."""

import json

from kubeclip.components.datasets import captions


def test_captions_are_all_of_an_images_captions_not_only_the_first():
    grouped = {"txt": b"a dog runs", "json": json.dumps({"captions": ["a dog runs", "a brown dog", "a pet"]}).encode()}
    assert captions(grouped) == ["a dog runs", "a brown dog", "a pet"]


def test_a_sample_without_grouped_captions_has_its_txt():
    assert captions({"txt": "a café".encode()}) == ["a café"]
    assert captions({"txt": b"a cat", "json": json.dumps({"source": "coco"}).encode()}) == ["a cat"]
