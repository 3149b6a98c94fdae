"""The prepare KFP components, run by KFP's local runner: partitions fan out, the merge collects them."""

import json
from pathlib import Path

from kfp import dsl

from kubeclip.components.prepare import step
from kubeclip.components.prepare.component import prepare_merge, prepare_synthetic


@dsl.pipeline
def partitioned_synthetic(samples: int = 60):
    with dsl.ParallelFor(items=["0/2", "1/2"]) as partition:
        part = prepare_synthetic(samples=samples, image_size=32, eval_samples_per_class=1, partition=partition)
    prepare_merge(parts=dsl.Collected(part.outputs["dataset"]))


def test_partitioned_pipeline_equals_one_run(kfp_local, tmp_path):
    partitioned_synthetic(samples=60)
    merged = next(Path(kfp_local).glob("*/prepare-merge/dataset/manifest.json"))
    whole = step.prepare_synthetic(step.SyntheticOptions(out=str(tmp_path / "whole"), samples=60, image_size=32,
                                                         eval_samples_per_class=1, workers=1))
    manifest = json.loads(merged.read_text())
    for key in ("rows_in", "rows_written", "rows_rejected"):
        assert manifest[key] == whole[key]
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == \
           {s: v["samples"] for s, v in whole["splits"].items()}
    assert (merged.parent / "eval" / "compositions" / "manifest.json").is_file()
