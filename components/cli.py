"""The `kubeclip` console script: one sub-command per step, each registered by its own `cli.py`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module has `add_parser(subparsers)`, which registers its command(s) with `func` set.
COMMAND_MODULES = [
    "kubeclip.components.prepare.cli",
    "kubeclip.components.train.cli",
    "kubeclip.components.benchmark.cli",
    "kubeclip.components.export.cli",
    "kubeclip.components.deploy.cli",
    "kubeclip.components.serve.cli",
    "kubeclip.pipelines.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeclip", allow_abbrev=False,
        description="CLIP as MLOps steps: prepare image-text pairs, train, benchmark, export and serve.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help()
            return 1
        return args.func(args) or 0
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback; each step keeps what it had committed
        print("kubeclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
