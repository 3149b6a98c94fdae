"""`kubeclip export`: flags in, the export step called, its report's verdicts out."""

from __future__ import annotations

import json

from kubeclip.components.options import add_options, options_from_args


def add_parser(subparsers) -> None:
    from kubeclip.components.export.step import ExportOptions

    parser = subparsers.add_parser(
        "export", help="PyTorch -> ONNX image and text towers (+ fp16, int8, TensorRT on GPUs), with parity gates",
        description="Export a checkpoint's towers to ONNX, check them against PyTorch on real images and texts, "
                    "and fail when a parity gate is missed (fp32: cosine >= 0.9999, max abs <= 1e-4; fp16: "
                    "cosine >= 0.999; int8: cosine >= 0.995 and zero-shot agreement >= 0.95).", allow_abbrev=False)
    add_options(parser, ExportOptions, params_section="export")
    parser.set_defaults(func=lambda args: command(args, parser))


def command(args, parser) -> int:
    from kubeclip.components.export.step import export

    report = export(options_from_args(args, parser))
    print(json.dumps({"artifacts": report["artifacts"], "tensorrt": report["tensorrt"]}))
    return 0
