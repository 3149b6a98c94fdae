"""KFP components of the prepare step: artifacts mapped to paths, then the step function called; the dataset's
metadata carries its row accounting and lineage."""

from typing import List

from kfp import dsl

from kubeclip.components.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def prepare_synthetic(dataset: dsl.Output[dsl.Dataset], samples: int = 10000, seed: int = 0, image_size: int = 224,
                      shard_size: int = 1000, val_fraction: float = 0.05, eval_samples_per_class: int = 50,
                      partition: str = "0/1"):
    """Draw the synthetic image-caption dataset (one partition of it) into `dataset`."""
    from kubeclip.components.lineage import lineage_metadata
    from kubeclip.components.prepare.step import SyntheticOptions, prepare_synthetic

    manifest = prepare_synthetic(SyntheticOptions(
        out=dataset.path, samples=samples, seed=seed, image_size=image_size, shard_size=shard_size,
        val_fraction=val_fraction, eval_samples_per_class=eval_samples_per_class, partition=partition))
    dataset.metadata.update({k: manifest[k] for k in ("rows_in", "rows_written", "rows_rejected")},
                            **lineage_metadata(dataset.path))


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def prepare_captions(dataset: dsl.Output[dsl.Dataset], captions: str, images: str, image_size: int = 224,
                     shard_size: int = 1000, val_fraction: float = 0.05, split_files: list = [],
                     partition: str = "0/1"):
    """Prepare image-caption rows (TSV/CSV/JSONL at a path or fsspec URL) into `dataset`."""
    from kubeclip.components.lineage import lineage_metadata
    from kubeclip.components.prepare.step import CaptionsOptions, prepare_captions

    manifest = prepare_captions(CaptionsOptions(
        out=dataset.path, captions=captions, images=images, image_size=image_size, shard_size=shard_size,
        val_fraction=val_fraction, split_files=list(split_files), partition=partition))
    dataset.metadata.update({k: manifest[k] for k in ("rows_in", "rows_written", "rows_rejected")},
                            **lineage_metadata(dataset.path))


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def prepare_merge(parts: dsl.Input[List[dsl.Dataset]], dataset: dsl.Output[dsl.Dataset]):
    """Combine the partitions' datasets into one."""
    from kubeclip.components.lineage import lineage_metadata
    from kubeclip.components.prepare.merge import MergeOptions, merge

    manifest = merge(MergeOptions(out=dataset.path, parts=[part.path for part in parts]))
    dataset.metadata.update({k: manifest[k] for k in ("rows_in", "rows_written", "rows_rejected")},
                            **lineage_metadata(dataset.path))
