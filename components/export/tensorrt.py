"""The TensorRT step's command line: `trtexec` builds an fp16 engine with batch optimisation profiles.

It runs on a GPU node inside the TensorRT container whose release matches the serving Triton's
(components/images.py names both), since an engine only loads in the TensorRT version that built it.
"""

from __future__ import annotations

import shutil

import torch

from components.export.onnx_towers import IMAGE_ONNX, TEXT_ONNX


def trtexec_command(onnx_path: str, plan_path: str, input_name: str, item_shape: tuple[int, ...],
                    max_batch: int = 64, opt_batch: int = 16) -> list[str]:
    """trtexec flags: fp16, and a profile from batch 1 to `max_batch`, tuned for `opt_batch`."""
    dims = "x".join(map(str, item_shape))
    return ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}", "--fp16",
            f"--minShapes={input_name}:1x{dims}", f"--optShapes={input_name}:{opt_batch}x{dims}",
            f"--maxShapes={input_name}:{max_batch}x{dims}", "--skipInference"]


def plan_commands(export_dir: str, image_size: int, context_length: int, max_batch: int = 64) -> list[list[str]]:
    """The two engine builds of an export folder, written to `trt/`."""
    return [trtexec_command(f"{export_dir}/{IMAGE_ONNX}", f"{export_dir}/trt/image_encoder.plan", "pixel_values",
                            (3, image_size, image_size), max_batch),
            trtexec_command(f"{export_dir}/{TEXT_ONNX}", f"{export_dir}/trt/text_encoder.plan", "input_ids",
                            (context_length,), max_batch)]


def availability() -> str | None:
    """None when engines can be built here, else why not (recorded in export_report.json)."""
    if not torch.cuda.is_available():
        return "skipped: no CUDA device"
    if shutil.which("trtexec") is None:
        return "skipped: trtexec not found (the TensorRT step runs in the TensorRT container on a GPU node)"
    return None
