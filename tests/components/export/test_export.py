"""Export: ONNX towers that ONNX Runtime runs like PyTorch at any batch size, gates that catch drift."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from kubeclip import model
from kubeclip.components.export.onnx_towers import ImageTower, TextTower
from kubeclip.components.export.parity import gate
from kubeclip.components.export.step import REPORT, ExportGateError, ExportOptions, check_gates, export, verify


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp("ckpt")
    model.save(model.build(request.param), checkpoint)
    out = tmp_path_factory.mktemp("export")
    report = export(ExportOptions(checkpoint=str(checkpoint), out=str(out), fp16=True, int8=True,
                                  parity_images=16))
    return model.load(checkpoint), out, report


def test_export_writes_the_contract(exported):
    """docs/contracts.md, "Export"."""
    clip, out, report = exported
    for name in ("image_encoder.onnx", "text_encoder.onnx", "image_encoder.fp16.onnx", "text_encoder.fp16.onnx",
                 "image_encoder.int8.onnx", "text_encoder.int8.onnx", "config.json",
                 "tokenizer/tokenizer_config.json", "lineage.json", REPORT):
        assert (out / name).is_file(), name
    assert json.loads((out / REPORT).read_text()) == report
    assert report["tensorrt"] == "skipped: no CUDA device"
    for name, figures in report["artifacts"].items():
        assert set(figures) == {"cosine_min", "max_abs_diff", "zeroshot_agreement"}
        assert all(g["passed"] for g in report["gates"][name].values())
    image, text = onnx.load(out / "image_encoder.onnx").graph, onnx.load(out / "text_encoder.onnx").graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in image.input] == [("pixel_values", onnx.TensorProto.FLOAT)]
    assert [(i.name, i.type.tensor_type.elem_type) for i in text.input] == [("input_ids", onnx.TensorProto.INT32)]
    assert [o.name for o in image.output] == [o.name for o in text.output] == ["embedding"]
    fp16 = onnx.load(out / "image_encoder.fp16.onnx").graph
    assert fp16.input[0].type.tensor_type.elem_type == fp16.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.initializer)
    inferred = onnx.shape_inference.infer_shapes(onnx.load(out / "text_encoder.fp16.onnx")).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]}
    layer_norms = [n for n in inferred.node if n.op_type == "LayerNormalization"]
    assert layer_norms and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in layer_norms)  # kept in fp32


def test_int8_variant_runs_integer_matmuls_on_the_same_contract(exported):
    clip, out, report = exported
    for tower in ("image_encoder", "text_encoder"):
        fp32, int8 = onnx.load(out / f"{tower}.onnx").graph, onnx.load(out / f"{tower}.int8.onnx").graph
        weights = {w.name for w in int8.initializer}
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in int8.node}
        assert not [n.name for n in int8.node if n.op_type == "MatMul" and weights & set(n.input)]  # all quantised
        assert [(i.name, i.type.tensor_type.elem_type) for i in int8.input] == \
            [(i.name, i.type.tensor_type.elem_type) for i in fp32.input]
        assert [o.name for o in int8.output] == ["embedding"]
        assert set(report["gates"][f"{tower}.int8.onnx"]) == {"cosine_min", "zeroshot_agreement"}


def test_int8_gate_asks_that_zero_shot_predictions_stay_put():
    close = {"cosine_min": 0.999, "max_abs_diff": 0.02}
    assert all(g["passed"] for g in gate("int8", {**close, "zeroshot_agreement": 1.0}).values())
    flipped = gate("int8", {**close, "zeroshot_agreement": 0.9})
    assert flipped["cosine_min"]["passed"] and not flipped["zeroshot_agreement"]["passed"]
    assert not gate("int8", {"cosine_min": 0.99, "max_abs_diff": 0.02, "zeroshot_agreement": 1.0})["cosine_min"][
        "passed"]


@pytest.mark.parametrize("batch", [1, 16])
def test_onnx_runtime_matches_pytorch_at_any_batch(exported, batch):
    clip, out, _ = exported
    torch.manual_seed(batch)
    pixels = torch.randn(batch, 3, clip.image_size, clip.image_size)
    ids = model.tokenize([f"a photo of {i} red circles" for i in range(batch)]).int()
    with torch.no_grad():
        expected_image, expected_text = ImageTower(clip)(pixels).numpy(), TextTower(clip)(ids).numpy()
    image = ort.InferenceSession(str(out / "image_encoder.onnx")).run(None, {"pixel_values": pixels.numpy()})[0]
    text = ort.InferenceSession(str(out / "text_encoder.onnx")).run(None, {"input_ids": ids.numpy()})[0]
    assert image.shape == (batch, clip.config.embed_dim) and text.shape == (batch, clip.config.embed_dim)
    assert np.abs(image - expected_image).max() <= 1e-4 and np.abs(text - expected_text).max() <= 1e-4
    assert np.allclose(np.linalg.norm(image, axis=1), 1, atol=1e-5)


def test_broken_parity_fails_the_gate(exported, tmp_path):
    clip, exported_dir, _ = exported
    out = shutil.copytree(exported_dir, tmp_path / "export")
    graph = onnx.load(out / "image_encoder.onnx")
    rng = np.random.default_rng(0)
    for weight in graph.graph.initializer:  # 1% noise on every weight: a subtly wrong export
        if weight.data_type == onnx.TensorProto.FLOAT and np.prod(weight.dims) > 1:
            values = numpy_helper.to_array(weight)
            noisy = values * (1 + 0.01 * rng.standard_normal(values.shape))
            weight.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), weight.name))
    onnx.save(graph, out / "image_encoder.onnx")
    report = verify(clip, out, None, 16)
    assert not report["gates"]["image_encoder.onnx"]["max_abs_diff"]["passed"]
    with pytest.raises(ExportGateError, match="image_encoder.onnx: max_abs_diff"):
        check_gates(report, out / REPORT)
