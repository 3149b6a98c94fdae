"""The two CLIP towers as ONNX graphs with a dynamic batch axis, and their fp16 variants.

Exporter: the TorchScript-based one (`dynamo=False`), chosen deliberately. It writes one
self-contained file per tower at opset 17 (LayerNormalization as one op), and onnxruntime matches
PyTorch to ~1e-7. torch 2.14's dynamo exporter names the token-embedding value `embedding`, which
clashes with the output name the serving contract fixes, and keeps weights in a side file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from onnxruntime.transformers import float16
from onnxruntime.transformers.onnx_model import OnnxModel

import model

IMAGE_ONNX, TEXT_ONNX = "image_encoder.onnx", "text_encoder.onnx"
# kept in fp32 inside fp16 graphs: normalisations and reductions lose too much in half precision
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt", "Exp"]


class ImageTower(torch.nn.Module):
    """pixel_values FP32 [B, 3, H, W] -> embedding FP32 [B, D], L2-normalised."""

    def __init__(self, clip: model.CLIP):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(pixel_values), dim=-1)


class TextTower(torch.nn.Module):
    """input_ids INT32 [B, L] -> embedding FP32 [B, D], L2-normalised (int32: TensorRT's argmax wants it)."""

    def __init__(self, clip: model.CLIP):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(input_ids), dim=-1)


def export_towers(clip: model.CLIP, out: Path, opset: int = 17) -> list[Path]:
    """Write and check `image_encoder.onnx` and `text_encoder.onnx`; returns their paths."""
    clip = clip.eval().float()
    examples = {
        IMAGE_ONNX: (ImageTower(clip), "pixel_values", torch.zeros(2, 3, clip.image_size, clip.image_size)),
        TEXT_ONNX: (TextTower(clip), "input_ids", model.tokenize(["a photo of a cat.", ""], clip.context_length).int()),
    }
    paths = []
    for name, (tower, input_name, example) in examples.items():
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice and its note on index ops
            torch.onnx.export(tower, (example,), out / name, input_names=[input_name], output_names=["embedding"],
                              dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        onnx.checker.check_model(out / name, full_check=True)
        paths.append(out / name)
    return paths


def to_fp16(src: Path) -> Path:
    """`<name>.fp16.onnx`: fp16 weights and matmuls, fp32 inputs, outputs, normalisations and reductions."""
    converted = OnnxModel(float16.convert_float_to_float16(onnx.load(src), keep_io_types=True,
                                                           op_block_list=float16.DEFAULT_OP_BLOCK_LIST + FP32_OPS))
    converted.topological_sort()  # the converter appends its input casts at the end of the graph
    dst = src.with_suffix(".fp16.onnx")
    onnx.save(converted.model, dst)
    onnx.checker.check_model(dst, full_check=True)
    return dst
