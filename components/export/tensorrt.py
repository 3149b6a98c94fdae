"""The TensorRT step: `trtexec` builds fp16 engines with batch optimisation profiles, runs them once on saved
inputs, and the engines' outputs must match ONNX Runtime's within the fp16 gate.

It runs on a GPU node inside the TensorRT container whose release matches the serving Triton's
(components/images.py names both), since an engine only loads in the TensorRT version that built it. That
container has trtexec but not kubeclip, so the work is split in three: `prepare` (the project image) writes
the inputs and `trt/build.sh`, the exact trtexec command lines; the TensorRT container runs that script; `check`
(the project image) compares the engines' outputs with ONNX Runtime's on the same inputs and records them in
export_report.json. Shapes and input names come from the ONNX graphs, so every text tower works alike.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch

from kubeclip.components.export.onnx_towers import IMAGE_ONNX, TEXT_ONNX

TOWERS = (IMAGE_ONNX, TEXT_ONNX)
PARITY_BATCH = 8  # items per tower that the engines and ONNX Runtime both embed
_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64}


def onnx_inputs(path: Path) -> dict[str, tuple[type, tuple[int, ...]]]:
    """Each graph input's numpy dtype and item shape (the dims after the dynamic batch axis)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {}
    for tensor in graph.input:
        dims = [d.dim_value for d in tensor.type.tensor_type.shape.dim][1:]
        inputs[tensor.name] = (_DTYPES[tensor.type.tensor_type.elem_type], tuple(dims))
    return inputs


def _shapes(inputs: dict[str, tuple[type, tuple[int, ...]]], batch: int) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, (batch, *shape)))}" for name, (_, shape) in inputs.items())


def plan_commands(export_dir: str | Path, max_batch: int = 64, opt_batch: int = 16,
                  named: str | Path | None = None) -> list[list[str]]:
    """trtexec builds of both towers into `trt/`: fp16, a batch profile from 1 to `max_batch` tuned for `opt_batch`.
    The commands name the folder `named` (default: `export_dir`), e.g. "." for a script run inside it."""
    at = Path(export_dir if named is None else named)
    commands = []
    for name in TOWERS:
        inputs = onnx_inputs(Path(export_dir) / name)
        commands.append(["trtexec", f"--onnx={at / name}", f"--saveEngine={_plan(at, name)}", "--fp16",
                         f"--minShapes={_shapes(inputs, 1)}", f"--optShapes={_shapes(inputs, opt_batch)}",
                         f"--maxShapes={_shapes(inputs, max_batch)}", "--skipInference"])
    return commands


def run_commands(export_dir: str | Path, named: str | Path | None = None) -> list[list[str]]:
    """trtexec runs of both engines on the saved inputs, each writing its outputs as JSON into `trt/outputs/`."""
    at = Path(export_dir if named is None else named)
    commands = []
    for name in TOWERS:
        inputs = onnx_inputs(Path(export_dir) / name)
        files = ",".join(f"{input_name}:{_input_file(at, name, input_name)}" for input_name in inputs)
        commands.append(["trtexec", f"--loadEngine={_plan(at, name)}", f"--loadInputs={files}",
                         f"--shapes={_shapes(inputs, PARITY_BATCH)}", f"--exportOutput={_output_file(at, name)}",
                         "--iterations=1", "--warmUp=0", "--duration=0"])
    return commands


def prepare(export_dir: Path, max_batch: int = 64) -> Path:
    """Write the parity inputs and `trt/build.sh` (builds, then runs); returns the script's path."""
    generator = np.random.default_rng(0)
    for name in TOWERS:
        for input_name, (dtype, shape) in onnx_inputs(export_dir / name).items():
            path = export_dir / _input_file(".", name, input_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            _parity_input(generator, input_name, dtype, (PARITY_BATCH, *shape)).tofile(path)
    (export_dir / "trt" / "outputs").mkdir(exist_ok=True)
    lines = ["#!/usr/bin/env bash", "# Written by components/export/tensorrt.py; run inside the TensorRT container.",
             "set -euo pipefail", 'cd "$(dirname "$0")/.."']
    lines += [shlex.join(c) for c in plan_commands(export_dir, max_batch, named=".") + run_commands(export_dir, ".")]
    script = export_dir / "trt" / "build.sh"
    script.write_text("\n".join(lines) + "\n")
    return script


def check(export_dir: Path) -> dict:
    """The engines' outputs against ONNX Runtime's on the same inputs, gated as fp16, written into the export's
    report; raises ExportGateError when a gate fails."""
    import onnxruntime as ort

    from kubeclip.components.export.parity import compare, gate
    from kubeclip.components.export.step import REPORT, check_gates

    report = json.loads((export_dir / REPORT).read_text())
    for name in TOWERS:
        inputs = onnx_inputs(export_dir / name)
        feed = {i: np.fromfile(export_dir / _input_file(".", name, i), dtype).reshape(PARITY_BATCH, *shape)
                for i, (dtype, shape) in inputs.items()}
        session = ort.InferenceSession(str(export_dir / name), providers=["CPUExecutionProvider"])
        expected = torch.from_numpy(session.run(["embedding"], feed)[0])
        engine = torch.from_numpy(trtexec_output(export_dir / _output_file(".", name), "embedding"))
        plan = str(_plan(".", name))
        report["artifacts"][plan] = figures = compare(expected, engine)
        report["gates"][plan] = gate("fp16", figures)
    report["tensorrt"] = "built"
    (export_dir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    check_gates(report, export_dir / REPORT)
    return report


def trtexec_output(path: Path, name: str) -> np.ndarray:
    """One output tensor from trtexec's --exportOutput JSON: [{"name", "dimensions": "8x512", "values": [...]}]."""
    for tensor in json.loads(path.read_text()):
        if tensor["name"] == name:
            shape = [int(d) for d in tensor["dimensions"].split("x")]
            return np.asarray(tensor["values"], dtype=np.float32).reshape(shape)
    raise ValueError(f"{path} has no output {name!r}")


def availability() -> str | None:
    """None when engines can be built here, else why not (recorded in export_report.json)."""
    if not torch.cuda.is_available():
        return "skipped: no CUDA device"
    if shutil.which("trtexec") is None:
        return "skipped: trtexec not found (the TensorRT step runs in the TensorRT container on a GPU node)"
    return None


def _parity_input(generator: np.random.Generator, name: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    if name == "attention_mask":
        return np.ones(shape, dtype)
    if np.issubdtype(dtype, np.integer):  # token ids valid in any text tower's vocabulary
        return generator.integers(1, 1000, shape).astype(dtype)
    return generator.standard_normal(shape).astype(dtype)


def _plan(export_dir: str | Path, onnx_name: str) -> Path:
    return Path(export_dir) / "trt" / onnx_name.replace(".onnx", ".plan")


def _input_file(export_dir: str | Path, onnx_name: str, input_name: str) -> Path:
    return Path(export_dir) / "trt" / "inputs" / f"{onnx_name.removesuffix('.onnx')}.{input_name}.bin"


def _output_file(export_dir: str | Path, onnx_name: str) -> Path:
    return Path(export_dir) / "trt" / "outputs" / f"{onnx_name.removesuffix('.onnx')}.json"
