"""The benchmark's three backends, PyTorch, ONNX Runtime and the real Triton server, give the same numbers."""

from kubeclip.components.benchmark.step import BenchmarkOptions, benchmark
from kubeclip.components.prepare import step as prepare


def test_torch_onnx_and_triton_backends_agree(checkpoint, exported, server, tmp_path):
    data = tmp_path / "data"
    prepare.prepare_synthetic(prepare.SyntheticOptions(out=str(data), samples=8, image_size=64,
                                                       eval_samples_per_class=8, workers=1))
    backends = {"torch": {}, "onnx": {"export": str(exported)}, "triton": {"url": server.http_url, "protocol": "http"}}
    results = {name: benchmark(BenchmarkOptions(checkpoint=str(checkpoint), out=str(tmp_path / name), cache=False,
                                                classification=str(data / "eval" / "compositions"), **extra))["zeroshot"]
               for name, extra in backends.items()}
    for name in ("onnx", "triton"):
        for key in ("top1", "top5", "mean_per_class_recall", "single_template_top1"):
            assert abs(results[name][key] - results["torch"][key]) <= 0.001, (name, key)
        assert results[name]["confusion_matrix"] == results["torch"]["confusion_matrix"]
