"""Prompt templates and class names: built-in sets, or JSON files in LAION CLIP_benchmark's format.

A template is a Python format string with the placeholder `{c}`. A JSON file maps dataset names to
lists (`{"cifar10": ["a photo of a {c}.", ...]}`), so one file serves many datasets; `dataset_name`
picks the entry, and a file with a single entry needs no name.
"""

from __future__ import annotations

import json

import fsspec

from kubeclip.components.prepare.synthetic import COMPOSITION_TEMPLATES, COUNT_TEMPLATES
from kubeclip.model.prompts import ENSEMBLE, PLAIN, template_problem

# Named like the synthetic evaluation sets (eval/compositions, eval/counts), so those pick their own.
BUILTIN = {"plain": PLAIN, "ensemble": ENSEMBLE, "compositions": COMPOSITION_TEMPLATES, "counts": COUNT_TEMPLATES}


def resolve_templates(spec: str | None, dataset_name: str) -> list[str]:
    """`spec`: a built-in set's name or a JSON file. Without one: the built-in set named like the
    dataset if there is one, else the ensemble."""
    if spec is None:
        templates = BUILTIN.get(dataset_name, ENSEMBLE)
    elif spec in BUILTIN:
        templates = BUILTIN[spec]
    else:
        templates = _entry(spec, dataset_name, "templates")
    return check_templates(list(templates), spec or "the built-in set")


def resolve_classnames(path: str | None, dataset_name: str, default: list[str]) -> list[str]:
    """The set's own class names (classes.txt), or those of a JSON file; the count must agree."""
    if path is None:
        return default
    names = _entry(path, dataset_name, "class names")
    if len(names) != len(default) or not all(isinstance(n, str) and n for n in names):
        raise SystemExit(f"{path}: expected {len(default)} class names (one per line of classes.txt, in label "
                         f"order), got {len(names)}")
    return names


def check_templates(templates: list[str], source: str) -> list[str]:
    if not templates:
        raise SystemExit(f"{source}: no templates")
    for template in templates:
        if problem := template_problem(template):
            raise SystemExit(f"{source}: {problem}")
    return templates


def _entry(path: str, dataset_name: str, what: str) -> list[str]:
    """The list for `dataset_name` in a CLIP_benchmark-style JSON file (or the file's only list)."""
    with fsspec.open(path, "r") as f:
        data = json.load(f)
    if isinstance(data, list):
        return data
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise SystemExit(f"{path}: expected {{\"dataset\": [...]}} (LAION CLIP_benchmark's format) for {what}")
    if dataset_name in data:
        return data[dataset_name]
    if len(data) == 1:
        return next(iter(data.values()))
    raise SystemExit(f"{path} holds {what} for {sorted(data)}; pick one with --dataset-name "
                     f"(it is {dataset_name!r} now)")
