"""`kubeclip deploy`: flags in, the deploy step called, what happened out."""

from __future__ import annotations

import json

from kubeclip.components.options import add_options, options_from_args


def add_parser(subparsers) -> None:
    from kubeclip.components.deploy.step import DeployOptions

    parser = subparsers.add_parser(
        "deploy", help="create or patch the KServe InferenceService; canary, then promote or roll back",
        description="Roll a Triton repository out as the InferenceService (storageUri, and the kubeclip.io/model-id, "
                    "kubeclip.io/lineage and kubeclip.io/git-commit annotations) and wait until it is Ready for the "
                    "generation written. With --canary-percent, watch the new revision's error ratio and p99 latency "
                    "in Prometheus, then promote it or undo the rollout with the reason; a readiness timeout undoes "
                    "it too (the previous spec restored, or a failed first rollout deleted). Prints one line saying "
                    "what was done and why, then the result as JSON; exits 1 when the rollout was undone. --dry-run "
                    "prints the object.",
        allow_abbrev=False)
    add_options(parser, DeployOptions, params_section="deploy")
    parser.set_defaults(func=lambda args: command(args, parser))


def command(args, parser) -> int:
    from kubeclip.components.deploy.step import RolloutFailed, deploy

    try:
        result = deploy(options_from_args(args, parser))
    except RolloutFailed as undone:  # its summary is printed already: the JSON, and a failure exit status
        print(json.dumps(undone.result))
        return 1
    if result["action"] != "dry-run":
        print(json.dumps(result))
    return 0
