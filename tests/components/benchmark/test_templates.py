"""Template sets: the built-ins, and JSON files in LAION CLIP_benchmark's format for templates and
class names, with --dataset-name picking an entry."""

import json

import pytest

from kubeclip.components.benchmark.templates import ENSEMBLE, PLAIN, resolve_classnames, resolve_templates
from kubeclip.components.prepare.synthetic import COMPOSITION_TEMPLATES

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def clip_benchmark_files(tmp_path):
    """Two datasets per file, as CLIP_benchmark's en_zeroshot_classification_templates.json and
    en_classnames.json hold them."""
    templates = tmp_path / "templates.json"
    templates.write_text(json.dumps({"cifar10": ["a photo of a {c}.", "a blurry photo of a {c}."],
                                     "mnist": ['a photo of the number: "{c}".']}))
    classnames = tmp_path / "classnames.json"
    classnames.write_text(json.dumps({"cifar10": ["airplane", "car", *CIFAR[2:]], "mnist": list("0123456789")}))
    return str(templates), str(classnames)


def test_builtin_sets():
    assert resolve_templates("plain", "x") == list(PLAIN) == ["a photo of a {c}."]
    assert resolve_templates("ensemble", "x")[0] == PLAIN[0] and len(ENSEMBLE) == 18
    assert resolve_templates(None, "cifar10") == list(ENSEMBLE)
    assert resolve_templates(None, "compositions") == list(COMPOSITION_TEMPLATES)  # named like the synthetic set


def test_clip_benchmark_json_picked_by_dataset_name(clip_benchmark_files):
    templates, classnames = clip_benchmark_files
    assert resolve_templates(templates, "cifar10") == ["a photo of a {c}.", "a blurry photo of a {c}."]
    assert resolve_templates(templates, "mnist") == ['a photo of the number: "{c}".']
    assert resolve_classnames(classnames, "cifar10", CIFAR)[1] == "car"
    assert resolve_classnames(None, "cifar10", CIFAR) == CIFAR
    with pytest.raises(SystemExit, match=r"holds templates for \['cifar10', 'mnist'\]; pick one with --dataset-name"):
        resolve_templates(templates, "my-set")
    with pytest.raises(SystemExit, match=r"expected 5 class names \(one per line of classes.txt, .*\), got 10"):
        resolve_classnames(classnames, "mnist", CIFAR[:5])


def test_a_single_entry_needs_no_name(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"whatever": ["itap of a {c}."]}))
    assert resolve_templates(str(path), "cifar") == ["itap of a {c}."]


@pytest.mark.parametrize("template, message", [("a photo of a {}.", r"the field \{\}: only a bare \{c\}"),
                                               ("a photo.", "no {c} placeholder"),
                                               ("a {c} of {size}.", r"the field \{size\}"),
                                               ("a {c:>100000}", r"the field \{c:>100000\}"),
                                               ("a {c!r}", r"the field \{c!r\}"),
                                               ("a {c.upper}", r"the field \{c.upper\}"),
                                               ("a {c[0]}", r"the field \{c\[0\]\}"),
                                               ("a {c", "not a format string")])
def test_bad_templates_are_refused(tmp_path, template, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"x": [template]}))
    with pytest.raises(SystemExit, match=message):
        resolve_templates(str(path), "x")
