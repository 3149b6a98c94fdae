"""Serving throughput on the CPU: ONNX Runtime against PyTorch eager, and Triton end to end.

One run builds a CLIP (random weights: speed does not depend on them), exports it with its int8 variant
(`kubeclip export --int8`), and measures:

  towers     image embeddings/s of the image tower alone, pixels in, at --batch-size: PyTorch eager
             (torch.inference_mode) and ONNX Runtime (CPU provider) on the fp32 and the int8 graph, same
             tensors, rounds of at least 2 s each with the order rotated; the goal is on the median of the
             rounds' ratios (a round's runs see the same load on a shared machine): ONNX Runtime >= 1.5x
             PyTorch. The int8 graph's parity with PyTorch on these tensors is printed beside it.
  raw ORT    per --precisions variant: image embeddings/s from encoded images (decode, preprocess, ONNX
             Runtime) in this process at --batch-size, median of 3 passes: the work Triton does per image,
             without serving.
  Triton     per variant, the cpu-flavor repository (`--precision`) on the nvidia-pytriton tritonserver;
             closed-loop gRPC clients (one thread and connection each) send one image per request to the
             clip_embed_image ensemble for --duration seconds at each concurrency, against two servers
             (dynamic batching on, off) measured back to back; QPS, p50 and p99 latency. Saturation is the
             best QPS with batching on; goal: >= 0.7x raw ORT of the same variant. The load client runs on
             the same cores as the server, so it is charged to Triton.

Images are Flickr8k JPEGs when --data has them, else synthetic PNGs.

    python benchmarks/serve_throughput.py                  # ViT-B-32 at 224 px: about 8 minutes on 2 cores
    python benchmarks/serve_throughput.py --model tiny-vit --duration 5 --precisions int8
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import tritonclient.grpc as grpcclient

from kubeclip import model
from kubeclip.components.benchmark.onnx_encoder import OnnxEncoder
from kubeclip.components.export.onnx_towers import IMAGE_ONNX, TEXT_ONNX, ImageTower, variant
from kubeclip.components.export.parity import compare
from kubeclip.components.export.step import ExportOptions, export
from kubeclip.components.export.triton_repo import TritonRepoOptions, triton_repo
from kubeclip.components.prepare import synthetic
from kubeclip.components.serve.load import closed_loop
from kubeclip.components.serve.triton_server import TritonServer


def sample_images(data: str, count: int, image_size: int) -> tuple[list[bytes], str]:
    folder = Path(data) / "images"
    if folder.is_dir():
        paths = sorted(folder.glob("*.jpg"))[:count]
        return [p.read_bytes() for p in paths], f"{len(paths)} Flickr8k JPEGs"
    images = []
    for i in range(count):
        buffer = io.BytesIO()
        synthetic.composition_sample(i, 0, image_size).image.save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images, f"{count} synthetic PNGs ({data} not found)"


def towers(clip: model.CLIP, export_dir: Path, batch: int, rounds: int, seconds: float = 2) -> dict[str, list]:
    """Image embeddings/s of the image tower per round: PyTorch eager and ONNX Runtime on the fp32 and int8
    graphs, same tensors; a round runs each for at least `seconds`, back to back in a rotated order, so the
    runs of a round see the same machine load."""
    pixels = torch.randn(batch, 3, clip.image_size, clip.image_size)
    tower = ImageTower(clip.eval())
    feed = {"pixel_values": pixels.numpy()}
    runs = {"pytorch": lambda: tower(pixels)}
    for precision in ("fp32", "int8"):
        session = ort.InferenceSession(str(export_dir / variant(IMAGE_ONNX, precision)),
                                       providers=["CPUExecutionProvider"])
        runs[f"onnxruntime-{precision}"] = lambda session=session: session.run(None, feed)[0]
    rates: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        outputs = {name: torch.as_tensor(run()) for name, run in runs.items()}  # untimed: first-call allocation
        for name in runs:
            print(f"  {name} vs PyTorch: {compare(outputs['pytorch'], outputs[name])}", flush=True)
        names = list(runs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start, calls = time.perf_counter(), 0
                while calls == 0 or time.perf_counter() - start < seconds:
                    runs[name]()
                    calls += 1
                rates[name].append(calls * batch / (time.perf_counter() - start))
    return rates


def raw_onnx(export_dir: Path, precision: str, images: list[bytes], batch: int, passes: int) -> float:
    """Median image embeddings/s of `passes` over the encoded images through OnnxEncoder (decode, preprocess,
    ONNX Runtime on the `precision` graph)."""
    encoder = OnnxEncoder(export_dir, variant(IMAGE_ONNX, precision), variant(TEXT_ONNX, precision), batch)
    encoder.encode_images(images[:batch])
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        encoder.encode_images(images)
        rates.append(len(images) / (time.perf_counter() - start))
    return statistics.median(rates)


def load(url: str, images: list[bytes], concurrency: int, duration: float, warmup: float) -> dict[str, float]:
    """Closed loop: one image per request to the image ensemble; the requests that start after the warm-up count."""
    def send(connection: grpcclient.InferenceServerClient, i: int) -> None:
        tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[images[i % len(images)]]], dtype=object))
        connection.infer("clip_embed_image", [tensor])

    done = closed_loop(lambda: grpcclient.InferenceServerClient(url), send, concurrency, duration, warmup)
    if done.failures:
        raise SystemExit(f"{len(done.failures)} requests failed, the first: {done.failures[0]}")
    return {"qps": done.qps, "p50_ms": done.percentile_ms(50), "p99_ms": done.percentile_ms(99),
            "requests": len(done.latencies)}


def triton(export_dir: Path, precision: str, work: Path, images: list[bytes], args) -> dict[bool, dict[int, dict]]:
    """{batching on?: {concurrency: figures}}. Both servers run side by side (the idle one costs nothing)
    and each concurrency measures them back to back, alternating which goes first, so a change in the
    machine's load hits both alike."""
    repos = {}
    for batching in (True, False):
        repos[batching] = work / f"repo-{precision}-batching-{'on' if batching else 'off'}"
        triton_repo(TritonRepoOptions(export=str(export_dir), out=str(repos[batching]), flavor="cpu",
                                      precision=precision, dynamic_batching=batching,
                                      max_batch_size=args.max_batch_size))
    results: dict[bool, dict[int, dict]] = {True: {}, False: {}}
    with TritonServer(repos[True], log_file=work / f"{precision}-on.log", exit_timeout=2) as on, \
            TritonServer(repos[False], log_file=work / f"{precision}-off.log", exit_timeout=2) as off:
        servers = {True: on, False: off}
        for i, concurrency in enumerate(args.concurrency):
            for batching in (True, False) if i % 2 == 0 else (False, True):
                r = results[batching][concurrency] = load(servers[batching].grpc_url, images, concurrency,
                                                          args.duration, args.warmup)
                print(f"  batching {'on ' if batching else 'off'} concurrency {concurrency:3d}: {r['qps']:8.1f} QPS, "
                      f"p50 {r['p50_ms']:8.1f} ms, p99 {r['p99_ms']:8.1f} ms ({r['requests']} requests)", flush=True)
    return results


def report(args, described: str, tower: dict[str, list], raw: dict[str, float],
           served: dict[str, dict[bool, dict[int, dict]]]) -> None:
    print(f"\n{args.model}, {described}, {os.cpu_count()} cores, load average now {os.getloadavg()[0]:.1f}")
    print(f"image tower, batch {args.batch_size}, median of {args.rounds} rounds:")
    for name, rates in tower.items():
        print(f"  {name:<18} {statistics.median(rates):9.1f} images/s")
    for name in ("onnxruntime-fp32", "onnxruntime-int8"):
        paired = [o / p for o, p in zip(tower[name], tower["pytorch"])]
        speedup = statistics.median(paired)
        print(f"  {name} / PyTorch, median of the rounds' ratios: {speedup:.2f}x (rounds {min(paired):.2f}.."
              f"{max(paired):.2f}), goal >= 1.5x: {'met' if speedup >= 1.5 else 'MISSED'}")
    for precision, by_batching in served.items():
        print(f"\n{precision}: raw ONNX Runtime from encoded images, batch {args.batch_size}: "
              f"{raw[precision]:9.1f} images/s")
        print(f"Triton ({precision}), clip_embed_image over gRPC, one image per request, {args.duration:g} s "
              "per point:")
        print(f"  {'concurrency':>11} | {'batching on: QPS':>16} {'p50 ms':>8} {'p99 ms':>8} | "
              f"{'batching off: QPS':>17} {'p50 ms':>8} {'p99 ms':>8}")
        for c in args.concurrency:
            on, off = by_batching[True][c], by_batching[False][c]
            print(f"  {c:>11} | {on['qps']:16.1f} {on['p50_ms']:8.1f} {on['p99_ms']:8.1f} | "
                  f"{off['qps']:17.1f} {off['p50_ms']:8.1f} {off['p99_ms']:8.1f}")
        saturation = max(r["qps"] for r in by_batching[True].values())
        ratio = saturation / raw[precision]
        print(f"Triton ({precision}) at saturation (batching on) / raw ONNX Runtime: {saturation:.1f} / "
              f"{raw[precision]:.1f} = {ratio:.2f}x, goal >= 0.7x: {'met' if ratio >= 0.7 else 'MISSED'}")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32", help="built-in model config or JSON file (default: %(default)s)")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"),
                   help="Flickr8k folder (images/*.jpg); synthetic images when absent (default: %(default)s)")
    p.add_argument("--images", type=positive, default=64, help="distinct images cycled through (default: %(default)s)")
    p.add_argument("--batch-size", type=positive, default=16,
                   help="batch of the tower and raw ONNX Runtime runs (default: %(default)s)")
    p.add_argument("--rounds", type=positive, default=5, help="rounds of the tower runs (default: %(default)s)")
    p.add_argument("--concurrency", type=positive, nargs="+", default=[1, 8, 32],
                   help="Triton client concurrencies (default: %(default)s)")
    p.add_argument("--duration", type=float, default=12,
                   help="measured seconds per Triton point (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=3,
                   help="unmeasured seconds before each point (default: %(default)s)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "int8"], default=["fp32", "int8"],
                   help="ONNX variants measured raw and served by Triton (default: fp32 int8)")
    p.add_argument("--max-batch-size", type=positive, default=32,
                   help="the repository's max_batch_size, the dynamic batcher's ceiling (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    clip = model.build(args.model).eval()
    images, described = sample_images(args.data, args.images, clip.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model.save(clip, work / "checkpoint")
        print(f"exporting {args.model} ...", flush=True)
        export(ExportOptions(checkpoint=str(work / "checkpoint"), out=str(work / "export"), int8=True,
                             parity_images=8))
        print("towers: PyTorch eager vs ONNX Runtime fp32 and int8 ...", flush=True)
        tower = towers(clip, work / "export", args.batch_size, args.rounds)
        raw, served = {}, {}
        for precision in args.precisions:
            print(f"{precision}: raw ONNX Runtime from encoded images ...", flush=True)
            raw[precision] = raw_onnx(work / "export", precision, images, args.batch_size, passes=3)
            print(f"{precision}: Triton ...", flush=True)
            served[precision] = triton(work / "export", precision, work, images, args)
    report(args, described, tower, raw, served)


if __name__ == "__main__":
    main()
