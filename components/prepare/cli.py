"""`kubeclip prepare <source>`: flags in, the step function called, a one-line summary out."""

from __future__ import annotations

import argparse
import json

from kubeclip.components.options import add_options, options_from_args

SOURCES = {
    "synthetic": ("SyntheticOptions", "prepare_synthetic",
                  "procedurally drawn scenes with captions (the embedded default) plus evaluation sets in eval/"),
    "captions": ("CaptionsOptions", "prepare_captions", "a TSV/CSV/JSONL of image paths and captions"),
    "coco": ("CocoOptions", "prepare_coco", "a COCO-style captions JSON"),
    "webdataset": ("WebDatasetOptions", "prepare_webdataset", "existing WebDataset tars, re-validated and re-sharded"),
    "classification": ("ClassificationOptions", "prepare_classification",
                       "a labelled set (labels.csv + classes.txt) into test/ and probe/ shards"),
}


def add_parser(subparsers) -> None:
    from kubeclip.components.prepare import merge, step

    parser = subparsers.add_parser(
        "prepare", help="validate, dedupe, resize and shard image-text pairs (WebDataset)",
        description="Turn image-text pairs into clean WebDataset shards, a manifest.json and a rejects.jsonl "
                    "that accounts for every input row.")
    sources = parser.add_subparsers(title="sources", metavar="SOURCE", required=True)
    for name, (options_type, function, help_text) in SOURCES.items():
        sub = sources.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        add_options(sub, getattr(step, options_type), params_section="prepare")
        sub.set_defaults(func=_command(getattr(step, function), sub))
    sub = sources.add_parser("merge", help="combine the outputs of --partition I/N runs", allow_abbrev=False)
    add_options(sub, merge.MergeOptions)
    sub.set_defaults(func=_command(merge.merge, sub))


def _command(function, parser):
    def command(args: argparse.Namespace) -> int:
        manifest = function(options_from_args(args, parser))
        summary = {k: manifest[k] for k in ("rows_in", "rows_written", "rows_rejected")}
        summary["samples"] = {name: split["samples"] for name, split in manifest["splits"].items()}
        print(json.dumps(summary))
        return 0
    return command
