"""What a transformer request asks for, parsed from either protocol and checked against the limits.

v1 (`POST /v1/models/{name}:predict`):
    {"instances": [{"image_b64": "..."} | {"text": "..."}, ...],
     "parameters": {"task": "embed" | "classify", "labels": [...], "templates": ["a photo of a {c}.", ...]}}
v2 (`POST /v2/models/{name}/infer`, or gRPC): one BYTES input `IMAGE` (encoded files; base64 strings in
JSON) or `TEXT` (UTF-8), shape [N] or [N, 1]; the same parameters, where `labels` and `templates` may
also be JSON-encoded strings (gRPC parameters hold scalars only).

Every check runs before anything reaches Triton, and a failure is an `InvalidInput` (HTTP 400) that
names the field and the limit. What a request expands into is bounded, not only its size: image limits
are checked from the file's header, without decoding (bytes, format, pixels, aspect ratio), and a
classify request builds at most `max_prompts` prompts (labels x templates), each within the text limit.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, to_http_parameters

from kubeclip.components.serve.triton_models.image_decode import ImageError, ImagePolicy, open_checked
from kubeclip.model.prompts import PLAIN, template_problem

TASKS = ("embed", "classify")


IMAGES = ImagePolicy()


@dataclass(frozen=True)
class Limits:
    """Per-request limits; each is a transformer flag (`--max-prompts`, ...)."""
    max_image_bytes: int = IMAGES.max_bytes
    max_image_pixels: int = IMAGES.max_pixels
    max_aspect_ratio: float = IMAGES.max_aspect_ratio
    image_formats: str = ",".join(IMAGES.formats)
    max_labels: int = 1000
    max_templates: int = 100
    max_prompts: int = 4096  # labels x templates: what one cold classifier build may cost
    max_text_chars: int = 1000  # a text, a label, a template, and every prompt built from them
    max_instances: int = 256

    @property
    def images(self) -> ImagePolicy:
        return ImagePolicy(self.max_image_bytes, self.max_image_pixels, self.max_aspect_ratio,
                           tuple(self.image_formats.split(",")))


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
    if len(body["instances"]) > limits.max_instances:  # before any instance is looked at
        raise InvalidInput(f"{len(body['instances'])} instances: the limit is {limits.max_instances} per request")
    items = [_v1_item(i, instance, limits) for i, instance in enumerate(body["instances"])]
    return _query(items, body.get("parameters") or {}, limits)


def parse_v2(request: InferRequest, limits: Limits) -> Query:
    if len(request.inputs) != 1 or request.inputs[0].name not in ("IMAGE", "TEXT"):
        raise InvalidInput(f"expected one input, IMAGE or TEXT (BYTES), got {[i.name for i in request.inputs]}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {tensor.name} must be BYTES, got {tensor.datatype}")
    shape = list(tensor.shape)
    if not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInput(f"input {tensor.name}: shape must be a list of non-negative integers, got {shape!r:.100}")
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidInput(f"input {tensor.name} must have shape [N] or [N, 1], got {shape}")
    if shape[0] > limits.max_instances:  # before decoding the tensor
        raise InvalidInput(f"{shape[0]} instances: the limit is {limits.max_instances} per request")
    try:
        values = tensor.as_numpy().reshape(-1).tolist()
    except ValueError as e:  # the data does not fill the shape
        raise InvalidInput(f"input {tensor.name}: its data does not match its shape {shape} ({e})") from None
    if len(values) != shape[0]:
        raise InvalidInput(f"input {tensor.name}: shape {shape} but {len(values)} elements")
    if tensor.name == "IMAGE":
        items = [_image(i, _v2_image_bytes(i, v, limits), limits) for i, v in enumerate(values)]
    else:
        items = [_text(i, _utf8(i, v), limits) for i, v in enumerate(values)]
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
    labels = _strings(parameters.get("labels"), "labels", limits.max_labels, limits)
    if len(set(labels)) != len(labels):
        raise InvalidInput("labels must be distinct")
    templates = _strings(parameters.get("templates", list(PLAIN)), "templates", limits.max_templates, limits)
    for template in templates:
        if problem := template_problem(template):
            raise InvalidInput(problem)
    if len(labels) * len(templates) > limits.max_prompts:
        raise InvalidInput(f"{len(labels)} labels x {len(templates)} templates = {len(labels) * len(templates)} "
                           f"prompts: the limit is {limits.max_prompts} per request")
    longest = max(map(len, labels)) + max(map(len, templates)) - len("{c}")
    if longest > limits.max_text_chars:
        raise InvalidInput(f"the longest label in the longest template makes a prompt of {longest} characters: "
                           f"the limit is {limits.max_text_chars}")
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
        open_checked(data, limits.images)
    except ImageError as e:
        raise InvalidInput(f"instance {i}: {e}") from None
    return data


def _utf8(i: int, value) -> str:
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8", "strict")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"instance {i}: text is not UTF-8 (byte {e.start})") from None


def _text(i: int, value, limits: Limits) -> str:
    _text_ok(value, f"instance {i}: text", limits)
    return value


def _text_ok(value, what: str, limits: Limits) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string")
    if len(value) > limits.max_text_chars:
        raise InvalidInput(f"{what} has {len(value)} characters: the limit is {limits.max_text_chars}")


def _strings(value, name: str, limit: int, limits: Limits) -> list[str]:
    """A list of non-empty strings within the text limit, from a JSON list or a JSON-encoded list (gRPC
    parameters are scalars)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise InvalidInput(f"{name}: expected a list of strings or a JSON-encoded list") from None
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"task classify needs {name}: a non-empty list of strings")
    if len(value) > limit:
        raise InvalidInput(f"{len(value)} {name}: the limit is {limit}")
    for i, item in enumerate(value):
        _text_ok(item, f"{name}[{i}]", limits)
    return value

