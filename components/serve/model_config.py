"""Triton `config.pbtxt` files for the repository's models, as dicts rendered to protobuf text format.

Rendered here rather than through tritonclient's ModelConfig protobuf because that module shares proto
symbols with kserve's and the two cannot load in one process; the tests parse every file as ModelConfig.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_ID_PARAMETER = "kubeclip_model_id"


class Enum(str):
    """A protobuf enum value (TYPE_FP32, KIND_GPU): written bare, not quoted."""


@dataclass(frozen=True)
class Scheduling:
    """What every non-ensemble model shares: its batch limit and how requests are batched."""
    max_batch_size: int
    dynamic_batching: bool
    max_queue_delay_us: int


def render(message: dict, indent: int = 0) -> str:
    """Protobuf text format: dicts are messages, lists of dicts repeated messages (map entries as
    {"key", "value"}), lists of scalars `[a, b]`."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        if isinstance(value, list) and value and not isinstance(value[0], dict):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                lines += [f"{pad}{key} {{", render(item, indent + 1), f"{pad}}}"]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "\n".join(line for line in lines if line)


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum) or isinstance(value, int | float):
        return str(value)
    if any(c in value for c in "\n\r\\\""):
        raise ValueError(f"refusing to write {value!r} into a config.pbtxt")
    return f'"{value}"'


def tensor(name: str, data_type: str, dims: list[int]) -> dict:
    """An input or output; dims exclude the batch dimension."""
    return {"name": name, "data_type": Enum(data_type), "dims": list(dims)}


def string_parameters(values: dict[str, str]) -> list[dict]:
    return [{"key": key, "value": {"string_value": str(value)}} for key, value in values.items()]


def _model(name: str, kind: dict, scheduling: Scheduling, inputs: list[dict], outputs: list[dict],
           instances: dict | None, parameters: dict[str, str], warmup: list[dict] | None = None,
           extra: dict | None = None) -> dict:
    config = {"name": name, **kind, "max_batch_size": scheduling.max_batch_size, "input": inputs, "output": outputs}
    if instances:
        config["instance_group"] = [instances]
    if scheduling.dynamic_batching and instances:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": scheduling.max_queue_delay_us}
    config.update(extra or {})
    if warmup:
        config["model_warmup"] = warmup
    config["parameters"] = string_parameters(parameters)
    return config


def python_model(name: str, scheduling: Scheduling, inputs: list[dict], outputs: list[dict], instances: int,
                 parameters: dict[str, str], warmup: list[dict] | None = None) -> dict:
    """A Python-backend model on CPU instances."""
    return _model(name, {"backend": "python"}, scheduling, inputs, outputs,
                  {"kind": Enum("KIND_CPU"), "count": instances}, parameters, warmup)


def onnx_gpu_model(name: str, scheduling: Scheduling, inputs: list[dict], outputs: list[dict], instances: int,
                   parameters: dict[str, str], warmup: list[dict], trt_cache_dir: str) -> dict:
    """An ONNX encoder on the ONNX Runtime backend, accelerated by TensorRT in fp16 (LayerNorm kept in fp32),
    engines cached on disk and built for the whole batch range at warm-up."""
    def profile(batch: int) -> str:
        return ",".join(f"{t['name']}:{'x'.join(map(str, [batch, *t['dims']]))}" for t in inputs)

    trt = {"precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30), "trt_layer_norm_fp32_fallback": "1",
           "trt_engine_cache_enable": "1", "trt_engine_cache_path": trt_cache_dir,
           "trt_profile_min_shapes": profile(1), "trt_profile_opt_shapes": profile(min(16, scheduling.max_batch_size)),
           "trt_profile_max_shapes": profile(scheduling.max_batch_size)}
    accelerators = {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": [
        {"key": key, "value": value} for key, value in trt.items()]}]}
    return _model(name, {"platform": "onnxruntime_onnx"}, scheduling, inputs, outputs,
                  {"kind": Enum("KIND_GPU"), "count": instances}, parameters, warmup,
                  {"optimization": {"execution_accelerators": accelerators}})


def plan_model(name: str, scheduling: Scheduling, inputs: list[dict], outputs: list[dict], instances: int,
               parameters: dict[str, str], warmup: list[dict]) -> dict:
    """A TensorRT engine built by the export's GPU step (trt/*.plan)."""
    return _model(name, {"platform": "tensorrt_plan"}, scheduling, inputs, outputs,
                  {"kind": Enum("KIND_GPU"), "count": instances}, parameters, warmup)


def ensemble(name: str, scheduling: Scheduling, inputs: list[dict], outputs: list[dict],
             steps: list[tuple[str, dict[str, str], dict[str, str]]], parameters: dict[str, str]) -> dict:
    """Steps as (model, {its input: ensemble tensor}, {its output: ensemble tensor}), latest versions."""
    schedule = {"step": [{"model_name": model, "model_version": -1,
                          "input_map": [{"key": k, "value": v} for k, v in input_map.items()],
                          "output_map": [{"key": k, "value": v} for k, v in output_map.items()]}
                         for model, input_map, output_map in steps]}
    return _model(name, {"platform": "ensemble"}, scheduling, inputs, outputs, None, parameters,
                  extra={"ensemble_scheduling": schedule})


def warmup(inputs: list[dict], batch_sizes: list[int], data_files: dict[str, str] | None = None) -> list[dict]:
    """Warm-up requests at each batch size: zeros, or the content of a file in the model's warmup/ folder."""
    def source(name: str) -> dict:
        return {"input_data_file": data_files[name]} if data_files and name in data_files else {"zero_data": True}

    values = {t["name"]: {"data_type": t["data_type"], "dims": t["dims"], **source(t["name"])} for t in inputs}
    return [{"name": f"batch_{batch}", "batch_size": batch,
             "inputs": [{"key": name, "value": value} for name, value in values.items()]}
            for batch in batch_sizes]
