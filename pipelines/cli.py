"""`kubeclip pipeline {compile,run,run-local,serve-check}`."""

from __future__ import annotations

import json
from pathlib import Path

from kubeclip.components.options import add_options, options_from_args
from kubeclip.pipelines import PIPELINE_ROOT_ENV, SERVICE_ACCOUNT


def add_parser(subparsers) -> None:
    from kubeclip.pipelines.serve_check import ServeCheckOptions

    parser = subparsers.add_parser("pipeline", help="the Kubeflow pipeline: compile, submit, or run it here",
                                   description="The Kubeflow pipeline wiring every step (prepare partitions, "
                                               "merge, train, benchmark, gate, export, package, deploy), and "
                                               "the local chain's last stage (serve-check).")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    compile_ = commands.add_parser("compile", help="write the IR YAML (default: the committed file)",
                                   allow_abbrev=False)
    compile_.add_argument("--output", type=Path, help="where to write it (default: pipelines/kubeclip_pipeline.yaml)")
    compile_.set_defaults(func=compile_command)
    param_help = "a pipeline parameter, NAME=VALUE (VALUE read as YAML); repeatable"
    run = commands.add_parser("run", help="submit a run to a Kubeflow Pipelines host", allow_abbrev=False)
    run.add_argument("--host", required=True, help="the KFP API, e.g. http://localhost:8080")
    run.add_argument("--experiment", default="kubeclip", help="experiment to file the run under")
    run.add_argument("--pipeline-root",
                     help=f"s3://bucket/prefix where the run keeps its artifacts (default: ${PIPELINE_ROOT_ENV}); "
                          "the tasks reach the store at the kubeclip-storage ConfigMap's AWS_ENDPOINT_URL")
    run.add_argument("--service-account", default=SERVICE_ACCOUNT,
                     help=f"the ServiceAccount the run's pods use (default: {SERVICE_ACCOUNT}, which "
                          "manifests/overlays/pipeline-rbac creates with the rights a run needs)")
    run.add_argument("--param", action="append", default=[], metavar="K=V", help=param_help)
    run.set_defaults(func=run_command)
    local = commands.add_parser("run-local", help="run the whole pipeline here with kfp.local", allow_abbrev=False)
    local.add_argument("--param", action="append", default=[], metavar="K=V", help=param_help)
    local.add_argument("--pipeline-root", type=Path, default=Path("runs/pipeline"), help="where outputs go")
    local.set_defaults(func=run_local_command)
    check = commands.add_parser("serve-check", allow_abbrev=False,
                                help="the local chain's last stage: serve the repository on a real Triton, run the "
                                     "held-out zero-shot through it, print the results table",
                                description="Serve a cpu-flavor Triton repository with the local tritonserver, "
                                            "evaluate what the benchmark evaluated through it, time single zero-shot "
                                            "queries, and write results.json and results.md (the demo's table).")
    add_options(check, ServeCheckOptions, params_section="serve_check")
    check.set_defaults(func=lambda args: serve_check_command(args, check))


def compile_command(args) -> int:
    from kubeclip.pipelines.run import COMPILED, compile_pipeline

    print(compile_pipeline(args.output or COMPILED))
    return 0


def run_command(args) -> int:
    from kubeclip.pipelines.run import parse_params, run_remote

    print(run_remote(args.host, parse_params(args.param), args.pipeline_root, args.experiment, args.service_account))
    return 0


def run_local_command(args) -> int:
    from kubeclip.pipelines.run import parse_params, run_local

    run_local(parse_params(args.param), args.pipeline_root)
    print(f"outputs under {args.pipeline_root}")
    return 0


def serve_check_command(args, parser) -> int:
    from kubeclip.pipelines.serve_check import serve_check

    results = serve_check(options_from_args(args, parser))
    print(json.dumps({"model_id": results["model_id"], "zeroshot_top1": results["zeroshot_top1"],
                      "latency_ms": results["latency_ms"]}))
    return 0
