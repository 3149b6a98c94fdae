"""The synthetic dataset: deterministic, true captions, held-out pairs really held out."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import numpy as np
import pytest

from kubeclip.components.prepare.synthetic import (
    BACKGROUNDS, COLOURS, COUNT_CLASSES, SHAPES, composition_sample, composition_set, count_sample, count_set,
    heldout_compositions, training_pair, training_pairs,
)

SIZE = 32  # small images keep the many-sample tests fast; scenes do not depend on size
MANY = 3000


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


# A colour word, optional size/texture words, then a shape word, with the count word or article before.
MENTION = re.compile(
    r"\b(a|an|one|two|three|four) (?:(?:small|large|solid|striped|dotted) )*"
    rf"({'|'.join(COLOURS)}) ({'|'.join(plural(s) for s in SHAPES)}|{'|'.join(SHAPES)})\b")
COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
SINGULAR = {plural(s): s for s in SHAPES} | {s: s for s in SHAPES}


@pytest.fixture(scope="module")
def many() -> list:
    return list(training_pairs(MANY, seed=0, size=SIZE))


def pixels(images) -> list[bytes]:
    return [item.image.tobytes() for item in images]


def test_same_seed_gives_identical_samples():
    first, second = list(training_pairs(20, seed=3)), list(training_pairs(20, seed=3))
    assert pixels(first) == pixels(second)
    assert [p.captions for p in first] == [p.captions for p in second]


def test_different_seed_gives_different_samples():
    a, b = pixels(training_pairs(10, seed=0)), pixels(training_pairs(10, seed=1))
    assert sum(x != y for x, y in zip(a, b)) >= 9


def test_training_pair_equals_the_iterators_item():
    items = list(training_pairs(12, seed=5, size=64))
    for i in (0, 7, 11):
        alone = training_pair(i, seed=5, size=64)
        assert alone == items[i]
        assert alone.image.tobytes() == items[i].image.tobytes()


def test_images_are_rgb_of_the_asked_size_with_safe_unique_keys(many):
    assert all(p.image.mode == "RGB" and p.image.size == (SIZE, SIZE) for p in many[:50])
    assert next(training_pairs(1, size=128)).image.size == (128, 128)
    keys = [p.key for p in many]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in keys)


def test_heldout_pairs_cover_each_colour_once_and_are_deterministic():
    for seed in range(5):
        heldout = heldout_compositions(seed)
        assert heldout == heldout_compositions(seed)
        assert sorted(c for c, _ in heldout) == sorted(COLOURS)
        assert all(s in SHAPES for _, s in heldout)
        shape_counts = Counter(s for _, s in heldout)
        assert max(shape_counts.values()) <= 2, "no shape loses more than two colours"
    assert len({heldout_compositions(seed) for seed in range(10)}) > 1


def test_heldout_pairs_are_never_drawn(many):
    heldout = set(heldout_compositions(0))
    drawn = {(o.colour, o.shape) for p in many for o in p.objects}
    assert not drawn & heldout
    assert drawn == set(itertools.product(COLOURS, SHAPES)) - heldout, "every other pair is drawn"


def test_heldout_pairs_never_appear_in_captions(many):
    heldout = set(heldout_compositions(0))
    banned = [f"{c} {s}" for c, s in heldout] + [f"{c} {plural(s)}" for c, s in heldout]
    for p in many:
        for caption in p.captions:
            assert not any(re.search(rf"\b{b}\b", caption) for b in banned), caption


def test_every_colour_and_shape_appears_in_training(many):
    text = " ".join(c for p in many for c in p.captions)
    assert {o.colour for p in many for o in p.objects} == set(COLOURS)
    assert {o.shape for p in many for o in p.objects} == set(SHAPES)
    assert all(re.search(rf"\b{word}\b", text) for word in COLOURS + SHAPES)


def test_captions_name_exactly_the_drawn_objects_with_their_counts(many):
    count_words_seen = set()
    for p in many:
        drawn = Counter((o.colour, o.shape) for o in p.objects)
        assert 3 <= len(p.captions) <= 5 and len(set(p.captions)) == len(p.captions)
        for i, caption in enumerate(p.captions):
            mentioned = {(c, SINGULAR[s]): COUNTS[n] for n, c, s in MENTION.findall(caption)}
            assert all(drawn[kind] == n for kind, n in mentioned.items()), (caption, drawn)
            if i == 0:
                assert mentioned == dict(drawn), "the first caption names every object"
        count_words_seen |= {n for c in p.captions for n, _, _ in MENTION.findall(c)}
    assert {"two", "three", "four"} <= count_words_seen


def test_attribute_words_match_the_scene(many):
    for p in many[:500]:
        text = " ".join(p.captions)
        for word in ("small", "large", "striped", "dotted"):
            if re.search(rf"\b{word}\b", text):
                assert any(word in (o.size, o.texture) for o in p.objects), (word, text)
        named = {b for b in BACKGROUNDS if re.search(rf"\b{b}\b", text)}
        assert named <= set(p.background.names), (named, p.background)


def test_drawn_colour_is_at_each_solid_objects_centre():
    _, items = composition_set(4, size=128)
    for item in items:
        obj = item.objects[0]
        if obj.texture == "solid":
            centre = item.image.getpixel((int(obj.x * 128), int(obj.y * 128)))
            assert np.abs(np.subtract(centre, obj.rgb)).max() <= 1, (obj, centre)


def test_composition_set_is_the_heldout_pairs():
    heldout = heldout_compositions(2)
    classes, items = composition_set(3, seed=2, size=SIZE)
    items = list(items)
    assert classes == [f"{c} {s}" for c, s in heldout]
    assert len(items) == 3 * len(classes)
    assert Counter(i.label for i in items) == {label: 3 for label in range(len(classes))}
    for item in items:
        assert [(o.colour, o.shape) for o in item.objects] == [heldout[item.label]]
    assert not {i.key for i in items} & {p.key for p in training_pairs(len(items), seed=2, size=SIZE)}
    assert pixels(items) == pixels(composition_set(3, seed=2, size=SIZE)[1])


def test_count_set_labels_match_drawn_counts():
    classes, items = count_set(5, seed=0, size=SIZE)
    items = list(items)
    heldout = set(heldout_compositions(0))
    assert classes == list(COUNT_CLASSES)
    assert Counter(i.label for i in items) == {label: 5 for label in range(4)}
    for item in items:
        kinds = {(o.colour, o.shape) for o in item.objects}
        assert len(item.objects) == item.label + 1 and len(kinds) == 1 and not kinds & heldout
    assert len({i.key for i in items}) == len(items)
    assert pixels(items) == pixels(count_set(5, seed=0, size=SIZE)[1])


def test_eval_items_can_be_made_alone():
    compositions, counts = list(composition_set(2, seed=1)[1]), list(count_set(2, seed=1)[1])
    assert composition_sample(5, seed=1) == compositions[5]
    assert count_sample(6, seed=1) == counts[6]
