"""What a transformer request asks for, parsed from either protocol and checked against the limits.

v1 (`POST /v1/models/{name}:predict`):
    {"instances": [{"image_b64": "..."} | {"text": "..."}, ...],
     "parameters": {"task": "embed" | "classify", "labels": [...], "templates": ["a photo of a {c}.", ...]}}
v2 (`POST /v2/models/{name}/infer`, or gRPC): one BYTES input `IMAGE` (encoded files; base64 strings in
JSON) or `TEXT` (UTF-8), shape [N] or [N, 1]; the same parameters, where `labels` and `templates` may
also be JSON-encoded strings (gRPC parameters hold scalars only).

Every check runs before anything reaches Triton, and a failure is an `InvalidInput` (HTTP 400) that
names the instance and the limit. Image limits are checked from the file's header, without decoding.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, to_http_parameters

from components.benchmark.templates import PLAIN, template_problem
from components.serve.triton_models.image_decode import ImageError, open_checked

TASKS = ("embed", "classify")


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 40_000_000
    max_labels: int = 1000
    max_templates: int = 100
    max_text_chars: int = 1000
    max_instances: int = 256


@dataclass(frozen=True)
class Query:
    """Images (bytes) and texts (str) in request order; labels and templates when classifying."""
    task: str
    items: list[bytes | str]
    labels: tuple[str, ...] = ()
    templates: tuple[str, ...] = PLAIN


def parse_v1(body: dict, limits: Limits) -> Query:
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise InvalidInput('expected a JSON object with "instances": a list of {"image_b64": ...} or {"text": ...}')
    items = [_v1_item(i, instance, limits) for i, instance in enumerate(body["instances"])]
    return _query(items, body.get("parameters") or {}, limits)


def parse_v2(request: InferRequest, limits: Limits) -> Query:
    if len(request.inputs) != 1 or request.inputs[0].name not in ("IMAGE", "TEXT"):
        raise InvalidInput(f"expected one input, IMAGE or TEXT (BYTES), got {[i.name for i in request.inputs]}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {tensor.name} must be BYTES, got {tensor.datatype}")
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidInput(f"input {tensor.name} must have shape [N] or [N, 1], got {shape}")
    if shape[0] > limits.max_instances:  # before decoding the tensor
        raise InvalidInput(f"{shape[0]} instances: the limit is {limits.max_instances} per request")
    values = tensor.as_numpy().reshape(-1).tolist()
    if tensor.name == "IMAGE":
        items = [_image(i, _v2_image_bytes(i, v, limits), limits) for i, v in enumerate(values)]
    else:
        items = [_text(i, v.decode("utf-8", "strict") if isinstance(v, bytes) else v, limits)
                 for i, v in enumerate(values)]
    return _query(items, to_http_parameters(request.parameters or {}), limits)


def _query(items: list[bytes | str], parameters: dict, limits: Limits) -> Query:
    if not items:
        raise InvalidInput("no instances")
    if len(items) > limits.max_instances:
        raise InvalidInput(f"{len(items)} instances: the limit is {limits.max_instances} per request")
    if not isinstance(parameters, dict):
        raise InvalidInput('"parameters" must be an object')
    task = parameters.get("task", "embed")
    if task not in TASKS:
        raise InvalidInput(f"task {task!r}: expected one of {', '.join(TASKS)}")
    if task == "embed":
        return Query(task, items)
    if any(isinstance(item, str) for item in items):
        raise InvalidInput("task classify takes images only; embed texts with task embed")
    labels = _strings(parameters.get("labels"), "labels", limits.max_labels)
    if len(set(labels)) != len(labels):
        raise InvalidInput("labels must be distinct")
    for label in labels:
        _text_ok(label, "a label", limits)
    templates = _strings(parameters.get("templates", list(PLAIN)), "templates", limits.max_templates)
    for template in templates:
        _template_ok(template, limits)
    return Query(task, items, tuple(labels), tuple(templates))


def _v1_item(i: int, instance, limits: Limits) -> bytes | str:
    if not isinstance(instance, dict) or len(instance) != 1 or not ({"image_b64", "text"} & set(instance)):
        raise InvalidInput(f'instance {i}: expected {{"image_b64": BASE64}} or {{"text": STRING}}')
    if "text" in instance:
        return _text(i, instance["text"], limits)
    return _image(i, _b64decode(i, instance["image_b64"], limits), limits)


def _v2_image_bytes(i: int, value, limits: Limits) -> bytes:
    return value if isinstance(value, bytes) else _b64decode(i, value, limits)


def _b64decode(i: int, value, limits: Limits) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"instance {i}: image_b64 must be a base64 string")
    if len(value) > 4 * (limits.max_image_bytes // 3 + 1) + 4:  # before decoding: the size it would decode to
        raise InvalidInput(f"instance {i}: image of about {len(value) * 3 / 4 / 2**20:.1f} MiB is over the limit "
                           f"of {limits.max_image_bytes / 2**20:.1f} MiB")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"instance {i}: image_b64 is not valid base64") from None


def _image(i: int, data: bytes, limits: Limits) -> bytes:
    try:
        open_checked(data, limits.max_image_bytes, limits.max_image_pixels)
    except ImageError as e:
        raise InvalidInput(f"instance {i}: {e}") from None
    return data


def _text(i: int, value, limits: Limits) -> str:
    _text_ok(value, f"instance {i}: text", limits)
    return value


def _text_ok(value, what: str, limits: Limits) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string")
    if len(value) > limits.max_text_chars:
        raise InvalidInput(f"{what} has {len(value)} characters: the limit is {limits.max_text_chars}")


def _template_ok(template, limits: Limits) -> None:
    _text_ok(template, "a template", limits)
    if problem := template_problem(template):
        raise InvalidInput(problem)


def _strings(value, name: str, limit: int) -> list[str]:
    """A list of strings from a JSON list or a JSON-encoded list (gRPC parameters are scalars)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InvalidInput(f"{name}: expected a list of strings or a JSON-encoded list") from None
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"task classify needs {name}: a non-empty list of strings")
    if len(value) > limit:
        raise InvalidInput(f"{len(value)} {name}: the limit is {limit}")
    return value

