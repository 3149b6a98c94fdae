"""The KServe transformer's cost: its end-to-end QPS and latency against calling Triton directly.

One run builds a CLIP (random weights: speed does not depend on them), exports it, packages the cpu-flavor
Triton repository, starts Triton (the nvidia-pytriton tritonserver) and the transformer
(`python -m kubeclip.components.serve.transformer`, gRPC v2 to Triton), and measures two workloads with closed-loop
clients (one thread and connection each, components/serve/load.py) at each concurrency:

  embed text   transformer: POST /v1/models/clip:predict {"instances": [{"text": ...}]}
               direct:      tritonclient gRPC, clip_embed_text, one text
  classify     transformer: one image into --labels labels, task classify (its classifier cached after warm-up)
               direct:      tritonclient gRPC, clip_embed_image, one image, and the same zero-shot scores
                            computed in the client from a classifier built once

Each point runs the transformer and the direct path back to back, alternating which goes first, so a change
in the machine's load hits both alike. Overhead = direct QPS / transformer QPS (1.0: free). The clients run
on the same cores as the servers.

    python benchmarks/transformer_throughput.py                     # tiny-vit: about 2 minutes
    python benchmarks/transformer_throughput.py --model ViT-B-32 --duration 10
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
from pathlib import Path

import httpx
import numpy as np
import torch
import tritonclient.grpc as grpcclient

from kubeclip import model
from kubeclip.components.export.step import ExportOptions, export
from kubeclip.components.export.triton_repo import TritonRepoOptions, triton_repo
from kubeclip.components.serve.load import Load, closed_loop
from kubeclip.components.serve.transformer_process import TransformerProcess
from kubeclip.components.serve.triton_server import TritonServer
from serve_throughput import sample_images

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
           "apple", "bicycle", "bridge", "castle", "cloud", "mountain", "rose", "tank", "train", "whale"]


def workloads(url: str, grpc_url: str, images: list[bytes], labels: list[str]) -> dict[str, dict]:
    """{workload: {path: (connect, send)}}; every send checks its answer."""
    encoded = [base64.b64encode(image).decode() for image in images]
    with grpcclient.InferenceServerClient(grpc_url) as client:
        classifier = embed(client, "clip_embed_text", "TEXT", [f"a photo of a {c}.".encode() for c in labels])

    def via_transformer(body_of):
        def send(client: httpx.Client, i: int) -> None:
            response = client.post(f"{url}/v1/models/clip:predict", json=body_of(i), timeout=60)
            if response.status_code != 200:
                raise RuntimeError(response.text)
        return httpx.Client, send

    def direct(send):
        return lambda: grpcclient.InferenceServerClient(grpc_url), send

    def direct_text(client, i: int) -> None:
        embed(client, "clip_embed_text", "TEXT", [f"a photo of {i} things".encode()])

    def direct_classify(client, i: int) -> None:
        logits = 100 * embed(client, "clip_embed_image", "IMAGE", [images[i % len(images)]]) @ classifier.T
        scores = np.exp(logits - logits.max())
        dict(zip(labels, (scores / scores.sum())[0].tolist()))  # what the transformer answers, label by label

    return {
        "embed text": {"transformer": via_transformer(lambda i: {"instances": [{"text": f"a photo of {i} things"}]}),
                       "direct": direct(direct_text)},
        f"classify ({len(labels)} labels)": {
            "transformer": via_transformer(lambda i: {"instances": [{"image_b64": encoded[i % len(encoded)]}],
                                                      "parameters": {"task": "classify", "labels": labels}}),
            "direct": direct(direct_classify)},
    }


def embed(client, model_name: str, input_name: str, items: list[bytes]) -> np.ndarray:
    tensor = grpcclient.InferInput(input_name, [len(items), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=object).reshape(-1, 1))
    return client.infer(model_name, [tensor]).as_numpy("EMBEDDING")


def measure(paths: dict, concurrency: int, args, flip: bool) -> dict[str, Load]:
    results = {}
    for path in (reversed(list(paths)) if flip else paths):
        connect, send = paths[path]
        results[path] = done = closed_loop(connect, send, concurrency, args.duration, args.warmup)
        if done.failures:
            raise SystemExit(f"{path}: {len(done.failures)} requests failed, the first: {done.failures[0]}")
        print(f"    {path:<11} concurrency {concurrency:3d}: {done.summary()}", flush=True)
    return results


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-vit", help="built-in config (default: %(default)s)")
    p.add_argument("--labels", type=int, default=10, help="zero-shot labels per classify request (default: 10)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="(default: 1 8 32)")
    p.add_argument("--duration", type=float, default=5, help="measured seconds per point (default: 5)")
    p.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each point (default: 1)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "flickr8k"),
                   help="a folder with images/*.jpg to send (default: ../shared/data/flickr8k; synthetic if absent)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if not 1 <= args.labels <= len(CLASSES):
        raise SystemExit(f"--labels: 1 to {len(CLASSES)}")
    work = Path(tempfile.mkdtemp(prefix="transformer-bench-"))
    torch.manual_seed(0)
    clip = model.build(args.model)
    model.save(clip, work / "checkpoint")
    export(ExportOptions(checkpoint=str(work / "checkpoint"), out=str(work / "export"), parity_images=4))
    triton_repo(TritonRepoOptions(export=str(work / "export"), out=str(work / "repo"), flavor="cpu"))
    images, described = sample_images(args.data, 64, clip.image_size)
    print(f"{args.model}, {described}, {os.cpu_count()} cores; work folder {work}")
    results: dict[str, dict[int, dict[str, Load]]] = {}
    with TritonServer(work / "repo", log_file=work / "triton.log", exit_timeout=2) as server:
        with TransformerProcess(server.grpc_url, work / "transformer.log") as transformer:
            for name, paths in workloads(transformer.url, server.grpc_url, images, CLASSES[:args.labels]).items():
                print(f"  {name}")
                results[name] = {c: measure(paths, c, args, flip=i % 2 == 1) for i, c in enumerate(args.concurrency)}
    print(f"\n{'workload':<20} {'conc':>4} | {'transformer QPS':>15} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'direct QPS':>10} {'p50 ms':>7} {'p99 ms':>7} | overhead (direct/transformer QPS)")
    for name, points in results.items():
        for concurrency, loads in points.items():
            t, d = loads["transformer"], loads["direct"]
            print(f"{name:<20} {concurrency:>4} | {t.qps:>15.1f} {t.percentile_ms(50):>7.1f} {t.percentile_ms(99):>7.1f} | "
                  f"{d.qps:>10.1f} {d.percentile_ms(50):>7.1f} {d.percentile_ms(99):>7.1f} | {d.qps / t.qps:.2f}x")


if __name__ == "__main__":
    main()
