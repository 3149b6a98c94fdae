"""Compile the pipeline to its committed IR YAML, submit it to a Kubeflow Pipelines host, or run it here."""

from __future__ import annotations

from pathlib import Path

import yaml
from kfp import compiler

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


def run_remote(host: str, params: dict, experiment: str = "kubeclip") -> str:
    """Submit with kfp.Client; returns the run id."""
    from kfp import Client

    result = Client(host=host).create_run_from_pipeline_func(kubeclip_pipeline, arguments=params,
                                                             experiment_name=experiment)
    return result.run_id


def run_local(params: dict, pipeline_root: Path) -> dict:
    """The whole pipeline in this environment with kfp.local's SubprocessRunner; returns the outputs."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    return kubeclip_pipeline(**params).outputs
