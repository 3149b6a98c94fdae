"""What every Python model here does with requests: one response per request, so a bad input fails its
own request with a message for the client (INVALID_ARG), never the whole batch or the stub."""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils


class InputError(ValueError):
    """A request's input is unacceptable; the message goes back to the client as it is."""


def model_config(args: dict) -> dict:
    return json.loads(args["model_config"])


def parameters(config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def error(message: str, code=None):
    """An error response; INTERNAL (HTTP 500) unless a code is given."""
    code = pb_utils.TritonError.INTERNAL if code is None else code
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def respond(requests: list, handle) -> list:
    """`handle(request)` -> output tensors, for each request; its InputError, or any failure, becomes that
    request's error response."""
    responses = []
    for request in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=handle(request)))
        except InputError as e:
            responses.append(error(str(e), pb_utils.TritonError.INVALID_ARG))
        except Exception as e:  # a bug must not take the model down with it
            responses.append(error(f"internal error: {type(e).__name__}: {e}"))
    return responses


def input_items(request, name: str) -> list:
    """The elements of a BYTES input [N, 1], in order."""
    return list(pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1))
