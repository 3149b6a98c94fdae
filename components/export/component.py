"""KFP component of the export step: a checkpoint into ONNX towers, failing the task when parity gates fail."""

from kfp import dsl

from components.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def export(checkpoint: dsl.Input[dsl.Model], exported: dsl.Output[dsl.Model], parity: dsl.Output[dsl.Metrics],
           fp16: bool = True, opset: int = 17, parity_images: int = 64):
    """ONNX towers (+ fp16) and export_report.json into `exported`, whose metadata carries the model id and the
    lineage; the parity figures as metrics."""
    from pathlib import Path

    from components.export.step import ExportOptions, export
    from components.export.triton_repo import model_id_of
    from components.lineage import lineage_metadata

    report = export(ExportOptions(checkpoint=checkpoint.path, out=exported.path, fp16=fp16, opset=opset,
                                  parity_images=parity_images))
    for artifact, figures in report["artifacts"].items():
        for name, value in figures.items():
            parity.log_metric(f"{artifact.removesuffix('.onnx').replace('.', '_')}_{name}", value)
    exported.metadata.update(tensorrt=report["tensorrt"], kubeclip_model_id=model_id_of(Path(exported.path)),
                             **lineage_metadata(exported.path))


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def package(exported: dsl.Input[dsl.Model], repository: dsl.Output[dsl.Model], flavor: str = "gpu",
            version: int = 1):
    """The Triton model repository of an export (`kubeclip triton-repo`); its metadata carries the model id and
    the lineage back to the training data."""
    from components.export.triton_repo import TritonRepoOptions, triton_repo
    from components.lineage import lineage_metadata

    summary = triton_repo(TritonRepoOptions(export=exported.path, out=repository.path, flavor=flavor,
                                            version=version))
    repository.metadata.update(kubeclip_model_id=summary["model_id"], flavor=flavor,
                               **lineage_metadata(repository.path))
