"""The export step: a checkpoint into ONNX towers (and fp16 and int8 variants), proven equal to PyTorch by gates.

The report records, per artifact, the minimum cosine and max abs difference against PyTorch and the
zero-shot agreement; the step fails, after writing the report, when an artifact misses its gate.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kubeclip import model
from kubeclip.components.benchmark.encoders import TorchEncoder
from kubeclip.components.benchmark.onnx_encoder import OnnxEncoder
from kubeclip.components.export import tensorrt
from kubeclip.components.export.onnx_towers import (IMAGE_ONNX, PRECISIONS, TEXT_ONNX, export_towers, to_fp16, to_int8,
                                                    variant)
from kubeclip.components.export.parity import gate, parity_set, tower_parity
from kubeclip.components.lineage import LINEAGE, file_sha256, write_lineage
from kubeclip.components.options import option
from kubeclip.components.storage import local_output
from kubeclip.components.train.checkpoints import local_weights
from kubeclip.model.checkpoint import save_config_and_tokenizer

REPORT = "export_report.json"


class ExportGateError(SystemExit):
    """An exported artifact differs from PyTorch by more than its gate allows."""


@dataclass(kw_only=True)
class ExportOptions:
    checkpoint: str = option(help="weights file, step folder, checkpoints folder or train --out folder")
    out: str = option(help="export folder: the ONNX towers, export_report.json, tokenizer/, config.json")
    fp16: bool = option(False, "also write *.fp16.onnx (fp16 inside; fp32 inputs, outputs and normalisations)")
    int8: bool = option(False, "also write *.int8.onnx (int8 MatMul/Gemm weights, activations quantised on the fly): "
                               "about 3x fp32's CPU throughput, for the cpu serving flavor")
    opset: int = option(17, "ONNX opset")
    parity_data: str | None = option(None, "classification set whose test images check parity; by default the "
                                           "synthetic held-out compositions, drawn on the fly")
    parity_images: int = option(64, "images used for the parity check")


def export(opts: ExportOptions) -> dict:
    """Export, check parity and write the report and lineage (published whatever the verdict); then fail on a
    missed gate. A remote --checkpoint is fetched first; a remote --out is built locally and uploaded."""
    started = time.time()
    with local_weights(opts.checkpoint) as (_, weights), local_output(opts.out, last=(LINEAGE,)) as out:
        clip = model.load(weights)
        export_towers(clip, out, opts.opset)
        if opts.fp16:
            to_fp16(out / IMAGE_ONNX), to_fp16(out / TEXT_ONNX)
        if opts.int8:
            to_int8(out / IMAGE_ONNX), to_int8(out / TEXT_ONNX)
        save_config_and_tokenizer(clip, out)
        report = verify(clip, out, opts.parity_data, opts.parity_images)
        write_lineage(str(out), "export", {"checkpoint": {"url": opts.checkpoint, "sha256": file_sha256(str(weights))}},
                      asdict(opts), started)
    check_gates(report, f"{opts.out.rstrip('/')}/{REPORT}")
    return report


def check_gates(report: dict, report_path: str | Path) -> None:
    failed = [f"{name}: {metric} {g['value']:.6g} (gate {g['threshold']:g})"
              for name, gates in report["gates"].items() for metric, g in gates.items() if not g["passed"]]
    if failed:
        raise ExportGateError("export parity gate failed; the exported graphs do not compute what the checkpoint "
                              "does:\n  " + "\n  ".join(failed) + f"\nsee {report_path}")


def verify(clip: model.CLIP, out: Path, parity_data: str | None, parity_images: int) -> dict:
    """Parity of every ONNX artifact in `out` with `clip`, the gates, and the TensorRT status; writes the report."""
    data = parity_set(parity_data, clip.image_size, parity_images)
    reference = TorchEncoder(clip)
    report: dict = {"artifacts": {}, "gates": {}, "parity_images": len(data.images), "parity_texts": len(data.texts)}
    for precision in PRECISIONS:
        image, text = variant(IMAGE_ONNX, precision), variant(TEXT_ONNX, precision)
        if not (out / image).exists():
            continue
        figures = tower_parity(reference, OnnxEncoder(out, image, text), data)
        for name, tower in ((image, "image"), (text, "text")):
            report["artifacts"][name] = figures[tower]
            report["gates"][name] = gate(precision, figures[tower])
    report["tensorrt"] = build_engines(out, clip) if tensorrt.availability() is None else tensorrt.availability()
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def build_engines(out: Path, clip: model.CLIP) -> str:
    (out / "trt").mkdir(exist_ok=True)
    for command in tensorrt.plan_commands(out):  # shapes and input names from the ONNX graphs
        subprocess.run(command, check=True)
    return "built"
