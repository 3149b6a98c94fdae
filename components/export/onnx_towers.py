"""The two CLIP towers as ONNX graphs with a dynamic batch axis, and their fp16 and int8 variants.

Exporter: the TorchScript-based one (`dynamo=False`), chosen deliberately. It writes one
self-contained file per tower at opset 17 (LayerNormalization as one op), and onnxruntime matches
PyTorch to ~1e-7. torch 2.14's dynamo exporter names the token-embedding value `embedding`, which
clashes with the output name the serving contract fixes, and keeps weights in a side file.

A Hugging Face text tower takes `attention_mask` INT32 [B, L] (1 = token, 0 = padding) beside
`input_ids`, as its tokenizer produces them; CLIP's own tower pools at end-of-text and needs no mask.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers import float16
from onnxruntime.transformers.onnx_model import OnnxModel

from kubeclip import model

IMAGE_ONNX, TEXT_ONNX = "image_encoder.onnx", "text_encoder.onnx"
PRECISIONS = ("fp32", "fp16", "int8")  # the variants of each tower: NAME.onnx, NAME.fp16.onnx, NAME.int8.onnx
TEXT_INPUTS, TEXT_INPUTS_HF = ("input_ids",), ("input_ids", "attention_mask")  # CLIP's text tower; Hugging Face's
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


class HFTextTower(TextTower):
    """input_ids INT32 [B, L], attention_mask INT32 [B, L] -> embedding FP32 [B, D], L2-normalised."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(input_ids, attention_mask=attention_mask), dim=-1)


def variant(name: str, precision: str) -> str:
    """The file name of a tower's `precision` variant."""
    return name if precision == "fp32" else name.replace(".onnx", f".{precision}.onnx")


def text_inputs(clip: model.CLIP) -> tuple[str, ...]:
    """The text tower's ONNX input names."""
    return TEXT_INPUTS_HF if clip.has_hf_text else TEXT_INPUTS


def text_tower(clip: model.CLIP) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The text tower to export and example inputs for it (int32, as the tokenizer serves them)."""
    texts = ["a photo of a cat.", ""]
    if clip.has_hf_text:
        ids, mask = clip.tokenizer.padded_ids_and_mask(texts, clip.context_length)
        return HFTextTower(clip), (torch.tensor(ids, dtype=torch.int32), torch.tensor(mask, dtype=torch.int32))
    return TextTower(clip), (clip.tokenizer(texts, clip.context_length).int(),)


def export_towers(clip: model.CLIP, out: Path, opset: int = 17) -> list[Path]:
    """Write and check `image_encoder.onnx` and `text_encoder.onnx`; returns their paths."""
    clip = clip.eval().float()
    text, text_examples = text_tower(clip)
    examples = {
        IMAGE_ONNX: (ImageTower(clip), ("pixel_values",), (torch.zeros(2, 3, clip.image_size, clip.image_size),)),
        TEXT_ONNX: (text, text_inputs(clip), text_examples),
    }
    paths = []
    for name, (tower, input_names, example) in examples.items():
        axes = {input_name: {0: "batch"} for input_name in input_names}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation notice and its note on index ops
            torch.onnx.export(tower, example, out / name, input_names=list(input_names), output_names=["embedding"],
                              dynamic_axes={**axes, "embedding": {0: "batch"}}, opset_version=opset, dynamo=False)
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


def to_int8(src: Path) -> Path:
    """`<name>.int8.onnx`: MatMul and Gemm weights in int8 (per output channel), activations quantised per batch
    as they come (ONNX Runtime's dynamic quantisation). It needs no calibration data, and on CPUs with int8 dot
    products it runs the towers about 3x faster than fp32; fp32 inputs and outputs as before. Weights use 7 bits
    (`reduce_range`): CPUs without VNNI (AVX2 only) multiply u8 by s8 in pairs that saturate at 8 bits, which
    broke the parity gate on such a machine (cosine 0.9945, zero-shot agreement 0.875)."""
    dst = src.with_suffix(".int8.onnx")
    logging.disable(logging.WARNING)  # its advice to pre-process first: the exporter already inferred shapes
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         reduce_range=True, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    onnx.checker.check_model(dst, full_check=True)
    return dst
