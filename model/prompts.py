"""Prompt templates for zero-shot classification: the built-in sets and the one rule every template obeys.

A template is a string with the bare placeholder `{c}` (LAION CLIP_benchmark's format) and no other
replacement field: no format spec, conversion, attribute or index, so a template can never make a
prompt longer than its text plus the class name. Torch-free: the serving transformer imports it.
"""

from __future__ import annotations

import string

PLAIN = ("a photo of a {c}.",)
# OpenAI's CIFAR prompt ensemble (CLIP paper, sec. 3.1.4): photo qualities and sizes that describe
# most natural-image datasets. Its first template is PLAIN's, so single_template_top1 means the same
# thing for both sets.
ENSEMBLE = (
    "a photo of a {c}.", "a blurry photo of a {c}.", "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.", "a high contrast photo of a {c}.", "a bad photo of a {c}.",
    "a good photo of a {c}.", "a photo of a small {c}.", "a photo of a big {c}.", "a photo of the {c}.",
    "a blurry photo of the {c}.", "a black and white photo of the {c}.", "a low contrast photo of the {c}.",
    "a high contrast photo of the {c}.", "a bad photo of the {c}.", "a good photo of the {c}.",
    "a photo of the small {c}.", "a photo of the big {c}.",
)


def template_problem(template: str) -> str | None:
    """Why `template` is not a usable prompt template, or None when it is. Parsed, never formatted."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as e:
        return f"template {template!r} is not a format string: {e}"
    for name, spec, conversion in fields:
        if name != "c" or spec or conversion:
            field = "{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
            return f"template {template!r} has the field {field}: only a bare {{c}} is allowed"
    if not fields:
        return f"template {template!r} has no {{c}} placeholder"
    return None


def build_prompts(labels: list[str], templates: list[str] | tuple[str, ...]) -> list[str]:
    """Every label in every template, label-major ([label 0 in each template, label 1 in each, ...])."""
    for template in templates:
        if problem := template_problem(template):
            raise ValueError(problem)
    return [template.replace("{c}", label) for label in labels for template in templates]
