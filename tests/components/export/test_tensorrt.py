"""The TensorRT step's halves that run without a GPU: the trtexec script it hands the TensorRT container,
and the parity check of the engines' outputs, which gates the plans as fp16. trtexec itself needs a GPU;
here its --exportOutput JSON is written from ONNX Runtime's fp16 graph, in trtexec's format."""

import json
import shlex
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import torch

from kubeclip import model
from kubeclip.components.export import tensorrt
from kubeclip.components.export.step import REPORT, ExportGateError, ExportOptions, export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp("ckpt")
    clip = model.build("tiny-vit")
    model.save(clip, checkpoint)
    out = tmp_path_factory.mktemp("export")
    export(ExportOptions(checkpoint=str(checkpoint), out=str(out), fp16=True, parity_images=8))
    tensorrt.prepare(out)
    return clip, out


def test_build_script_builds_fp16_engines_with_batch_profiles_then_runs_them(exported):
    clip, out = exported
    script = (out / "trt" / "build.sh").read_text()
    assert subprocess.run(["bash", "-n", str(out / "trt" / "build.sh")]).returncode == 0
    commands = [shlex.split(line) for line in script.splitlines() if line.startswith("trtexec")]
    s, length = clip.image_size, clip.context_length
    assert commands[:2] == [
        ["trtexec", "--onnx=image_encoder.onnx", "--saveEngine=trt/image_encoder.plan", "--fp16",
         f"--minShapes=pixel_values:1x3x{s}x{s}", f"--optShapes=pixel_values:16x3x{s}x{s}",
         f"--maxShapes=pixel_values:64x3x{s}x{s}", "--skipInference"],
        ["trtexec", "--onnx=text_encoder.onnx", "--saveEngine=trt/text_encoder.plan", "--fp16",
         f"--minShapes=input_ids:1x{length}", f"--optShapes=input_ids:16x{length}", f"--maxShapes=input_ids:64x{length}",
         "--skipInference"]]
    image_run = commands[2]
    assert image_run[:4] == ["trtexec", "--loadEngine=trt/image_encoder.plan",
                             "--loadInputs=pixel_values:trt/inputs/image_encoder.pixel_values.bin",
                             f"--shapes=pixel_values:8x3x{s}x{s}"]
    assert "--exportOutput=trt/outputs/image_encoder.json" in image_run
    assert (out / "trt/inputs/image_encoder.pixel_values.bin").stat().st_size == 8 * 3 * s * s * 4
    assert (out / "trt/inputs/text_encoder.input_ids.bin").stat().st_size == 8 * length * 4


def write_engine_outputs(out, noise: float = 0.0) -> None:
    """What trtexec --exportOutput writes, from the fp16 graphs (an fp16 engine's stand-in) on the saved inputs."""
    for name in tensorrt.TOWERS:
        inputs = tensorrt.onnx_inputs(out / name)
        feed = {i: np.fromfile(out / "trt" / "inputs" / f"{name[:-5]}.{i}.bin", dtype).reshape(8, *shape)
                for i, (dtype, shape) in inputs.items()}
        session = ort.InferenceSession(str(out / name.replace(".onnx", ".fp16.onnx")), providers=["CPUExecutionProvider"])
        embedding = session.run(["embedding"], feed)[0]
        embedding = embedding + noise * np.random.default_rng(1).standard_normal(embedding.shape)
        (out / "trt" / "outputs" / f"{name[:-5]}.json").write_text(json.dumps([
            {"name": "embedding", "dimensions": "x".join(map(str, embedding.shape)),
             "values": embedding.reshape(-1).tolist()}]))


def test_engines_within_the_fp16_gate_are_recorded_as_built(exported):
    _, out = exported
    write_engine_outputs(out)
    report = tensorrt.check(out)
    assert report == json.loads((out / REPORT).read_text())
    assert report["tensorrt"] == "built"
    for plan in ("trt/image_encoder.plan", "trt/text_encoder.plan"):
        assert report["artifacts"][plan]["cosine_min"] >= 0.999
        assert report["gates"][plan]["cosine_min"]["passed"]


def test_engines_that_drift_fail_the_gate(exported):
    _, out = exported
    write_engine_outputs(out, noise=0.5)
    with pytest.raises(ExportGateError, match="trt/image_encoder.plan: cosine_min"):
        tensorrt.check(out)
