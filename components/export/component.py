"""KFP components of the export step: a checkpoint into ONNX towers, failing the task when parity gates fail;
TensorRT engines built in the TensorRT container on a GPU node and gated against ONNX Runtime; packaging."""

from kfp import dsl

from kubeclip.components.images import RUNTIME_IMAGE, TENSORRT_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def export(checkpoint: dsl.Input[dsl.Model], exported: dsl.Output[dsl.Model], parity: dsl.Output[dsl.Metrics],
           fp16: bool = True, int8: bool = False, opset: int = 17, parity_images: int = 64, tensorrt: bool = False):
    """ONNX towers (+ fp16, int8) and export_report.json into `exported`, whose metadata carries the model id and the
    lineage; the parity figures as metrics. With `tensorrt`, also the inputs and script of the TensorRT step."""
    from pathlib import Path

    from kubeclip.components.export import tensorrt as trt
    from kubeclip.components.export.step import ExportOptions, export
    from kubeclip.components.export.triton_repo import model_id_of
    from kubeclip.components.lineage import lineage_metadata

    report = export(ExportOptions(checkpoint=checkpoint.path, out=exported.path, fp16=fp16, int8=int8, opset=opset,
                                  parity_images=parity_images))
    if tensorrt:
        trt.prepare(Path(exported.path))
    for artifact, figures in report["artifacts"].items():
        for name, value in figures.items():
            parity.log_metric(f"{artifact.removesuffix('.onnx').replace('.', '_')}_{name}", value)
    exported.metadata.update(tensorrt=report["tensorrt"], kubeclip_model_id=model_id_of(Path(exported.path)),
                             **lineage_metadata(exported.path))


@dsl.container_component
def export_tensorrt(exported: dsl.Input[dsl.Model], engines: dsl.Output[dsl.Model]):
    """fp16 TensorRT plans of an export, built and run once on its saved inputs by trtexec (the export's
    trt/build.sh), in the TensorRT release that matches the serving Triton's."""
    return dsl.ContainerSpec(image=TENSORRT_IMAGE, command=["bash", "-c", 'mkdir -p "$1" && cp -r "$0"/. "$1" '
                                                                          '&& bash "$1/trt/build.sh"'],
                             args=[exported.path, engines.path])


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def export_tensorrt_check(engines: dsl.Input[dsl.Model], checked: dsl.Output[dsl.Model], parity: dsl.Output[dsl.Metrics]):
    """The engines' outputs against ONNX Runtime's (fp16 gate), recorded in export_report.json; fails the task
    when a gate fails, so no drifting plan is packaged."""
    import shutil
    from pathlib import Path

    from kubeclip.components.export import tensorrt as trt

    shutil.copytree(engines.path, checked.path)
    report = trt.check(Path(checked.path))
    for artifact in ("trt/image_encoder.plan", "trt/text_encoder.plan"):
        for name, value in report["artifacts"][artifact].items():
            parity.log_metric(f"{Path(artifact).stem}_plan_{name}", value)
    checked.metadata.update(engines.metadata, tensorrt=report["tensorrt"])


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def package(exported: dsl.Input[dsl.Model], repository: dsl.Output[dsl.Model], flavor: str = "gpu",
            precision: str = "fp32", version: int = 1):
    """The Triton model repository of an export (`kubeclip triton-repo`); its metadata carries the model id and
    the lineage back to the training data."""
    from kubeclip.components.export.triton_repo import TritonRepoOptions, triton_repo
    from kubeclip.components.lineage import lineage_metadata

    summary = triton_repo(TritonRepoOptions(export=exported.path, out=repository.path, flavor=flavor,
                                            precision=precision, version=version))
    repository.metadata.update(kubeclip_model_id=summary["model_id"], flavor=flavor, precision=precision,
                               **lineage_metadata(repository.path))
