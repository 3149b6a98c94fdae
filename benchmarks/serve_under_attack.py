"""What hostile traffic costs the valid traffic beside it, and the memory it drives the servers to.

One run builds a CLIP (random weights: speed does not depend on them), exports it, packages the cpu-flavor
Triton repository, starts Triton and the transformer with the limits it ships with, and measures valid
traffic (16 closed-loop clients: embed a text, embed an image, classify an image into cached labels) for
--duration seconds alone and with the hostile corpus (components/serve/hostile.py, four senders) beside it,
alternating which goes first in each round. Ratio = QPS with the attack / QPS without it (1.0: the attack
costs nothing). Peak RSS of the transformer and of Triton with its Python-backend stubs is sampled
throughout and set against the memory limits in manifests/base/serving.

    python benchmarks/serve_under_attack.py                 # tiny-vit, 2 rounds of 2 x 20 s: about 2 minutes
"""

from __future__ import annotations

import argparse
import base64
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from PIL import Image

from kubeclip import model
from kubeclip.components.export.step import ExportOptions, export
from kubeclip.components.export.triton_repo import TritonRepoOptions, triton_repo
from kubeclip.components.serve import hostile
from kubeclip.components.serve.load import Load, PeakMemory, closed_loop, memory_limit, process_tree
from kubeclip.components.serve.transformer_process import TransformerProcess
from kubeclip.components.serve.triton_server import TritonServer

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["red square", "green circle", "blue triangle"]


def valid_bodies() -> list[dict]:
    image = base64.b64encode(hostile.encoded(Image.new("RGB", (64, 48), (200, 30, 30)), "PNG")).decode()
    return [{"instances": [{"text": "a red square"}]}, {"instances": [{"image_b64": image}]},
            {"instances": [{"image_b64": image}], "parameters": {"task": "classify", "labels": LABELS}}]


def valid_load(url: str, args, cases: list[hostile.Case] | None) -> tuple[Load, dict[str, int]]:
    """--concurrency valid clients for --duration seconds, with `cases` sent beside them (None: quiet); the load
    and the hostile answers by status."""
    bodies, stop, answers = valid_bodies(), threading.Event(), {}

    def send(client: httpx.Client, i: int) -> None:
        response = client.post(f"{url}{hostile.PREDICT}", json=bodies[i % len(bodies)], timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}")

    def attacker() -> None:
        with ThreadPoolExecutor(4) as pool:
            while not stop.is_set():
                for status in pool.map(lambda c: hostile.outcome(c, url), cases):
                    answers[status] = answers.get(status, 0) + 1

    thread = threading.Thread(target=attacker)
    if cases:
        thread.start()
    try:
        return closed_loop(httpx.Client, send, args.concurrency, args.duration, warmup=1), answers
    finally:
        stop.set()
        if cases:
            thread.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-vit", help="built-in config (default: %(default)s)")
    p.add_argument("--duration", type=float, default=20, help="measured seconds per point (default: 20)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (quiet, attack) (default: 2)")
    p.add_argument("--concurrency", type=int, default=16, help="valid clients (default: 16)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-under-attack-"))
    torch.manual_seed(0)
    model.save(model.build(args.model), work / "checkpoint")
    export(ExportOptions(checkpoint=str(work / "checkpoint"), out=str(work / "export"), parity_images=4))
    triton_repo(TritonRepoOptions(export=str(work / "export"), out=str(work / "repo"), flavor="cpu"))
    print(f"{args.model}, {os.cpu_count()} cores, {args.concurrency} valid clients; work folder {work}")
    results: dict[bool, list[Load]] = {False: [], True: []}
    cases = hostile.corpus()
    with TritonServer(work / "repo", log_file=work / "triton.log", exit_timeout=2) as server:
        with TransformerProcess(server.grpc_url, work / "transformer.log") as transformer:
            memory = PeakMemory({"transformer": [transformer.process.pid],
                                 "triton": process_tree(server.process.pid)})
            memory.start()
            for round_ in range(args.rounds):
                for attack in ((False, True) if round_ % 2 == 0 else (True, False)):
                    load, answers = valid_load(transformer.url, args, cases if attack else None)
                    results[attack].append(load)
                    print(f"  round {round_} {'attack' if attack else 'quiet ':<6}: {load.summary()}"
                          + (f"; hostile answers by status {dict(sorted(answers.items(), key=str))}" if attack else ""),
                          flush=True)
            peaks = memory.stop()
    serving = ROOT / "manifests" / "base" / "serving"
    limits = {"transformer": memory_limit(serving / "clip.yaml", "kserve-container"),
              "triton": memory_limit(serving / "kubeclip-triton.yaml", "kserve-container")}
    quiet, attacked = (sum(load.qps for load in results[a]) / len(results[a]) for a in (False, True))
    p50s = {a: sum(load.percentile_ms(50) for load in results[a]) / len(results[a]) for a in (False, True)}
    p99s = {a: sum(load.percentile_ms(99) for load in results[a]) / len(results[a]) for a in (False, True)}
    failed = sum(len(load.failures) for loads in results.values() for load in loads)
    print(f"\nvalid traffic  quiet: {quiet:.1f} QPS, p50 {p50s[False]:.1f} ms, p99 {p99s[False]:.1f} ms | "
          f"under attack: {attacked:.1f} QPS, p50 {p50s[True]:.1f} ms, p99 {p99s[True]:.1f} ms | "
          f"ratio {attacked / quiet:.2f}x QPS; valid requests not answered 200: {failed}")
    for name, peak in peaks.items():
        print(f"peak RSS {name}: {peak / 2**20:.0f} MiB of its {limits[name] / 2**20:.0f} MiB limit "
              f"({peak / limits[name]:.0%})")


if __name__ == "__main__":
    main()
