"""Compile the pipeline to its committed IR YAML, submit it to a Kubeflow Pipelines host, or run it here."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from kfp import compiler

from kubeclip.pipelines import PIPELINE_ROOT_ENV, SERVICE_ACCOUNT
from kubeclip.pipelines.kubeclip_pipeline import kubeclip_pipeline

COMPILED = Path(__file__).with_name("kubeclip_pipeline.yaml")


def parse_params(items: list[str]) -> dict:
    """K=V pairs, each value read as YAML (400, 0.001, true, [zeroshot.top1=0.5])."""
    known = kubeclip_pipeline.component_spec.inputs or {}
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--param takes NAME=VALUE with NAME one of {', '.join(sorted(known))}; got {item!r}")
        params[key] = yaml.safe_load(value)
    return params


def compile_pipeline(output: Path = COMPILED) -> Path:
    compiler.Compiler().compile(kubeclip_pipeline, str(output))
    return output


def run_remote(host: str, params: dict, pipeline_root: str | None = None, experiment: str = "kubeclip",
               service_account: str = SERVICE_ACCOUNT) -> str:
    """Submit with kfp.Client as `service_account`, keeping the artifacts under `pipeline_root` (default
    $KUBECLIP_PIPELINE_ROOT); returns the run id."""
    from kfp import Client

    root = checked_root(pipeline_root)
    result = Client(host=host).create_run_from_pipeline_func(kubeclip_pipeline, arguments=params,
                                                             experiment_name=experiment, pipeline_root=root,
                                                             service_account=service_account)
    return result.run_id


def checked_root(pipeline_root: str | None) -> str:
    """The run's pipeline root: an s3:// URL (MinIO included, reached at the AWS_ENDPOINT_URL the tasks are given).
    KFP's default, minio://, is a scheme that neither fsspec nor KServe's storageUri knows."""
    root = pipeline_root or os.environ.get(PIPELINE_ROOT_ENV, "")
    if not re.fullmatch(r"s3://[^/]+(/.*)?", root):
        raise SystemExit(f"a cluster run needs --pipeline-root (or ${PIPELINE_ROOT_ENV}) set to an s3:// URL such as "
                         f"s3://bucket/prefix; got {root!r}")
    return root


def run_local(params: dict, pipeline_root: Path) -> dict:
    """The whole pipeline in this environment with kfp.local's SubprocessRunner; returns the outputs."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    return kubeclip_pipeline(**params).outputs
