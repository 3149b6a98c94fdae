"""`kubeclip deploy`: flags in, the deploy step called, what happened out."""

from __future__ import annotations

import json

from components.options import add_options, options_from_args


def add_parser(subparsers) -> None:
    from components.deploy.step import DeployOptions

    parser = subparsers.add_parser(
        "deploy", help="create or patch the KServe InferenceService; canary, then promote or roll back",
        description="Roll a Triton repository out as the InferenceService (storageUri, and the kubeclip.io/model-id, "
                    "kubeclip.io/lineage and kubeclip.io/git-commit annotations). With --canary-percent, watch the new revision's error ratio and p99 latency in "
                    "Prometheus, then promote it or roll back with the reason. --dry-run prints the object.",
        allow_abbrev=False)
    add_options(parser, DeployOptions, params_section="deploy")
    parser.set_defaults(func=lambda args: command(args, parser))


def command(args, parser) -> int:
    from components.deploy.step import deploy

    result = deploy(options_from_args(args, parser))
    if result["action"] != "dry-run":
        print(json.dumps(result))
    return 0
