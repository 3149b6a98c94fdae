"""What object storage costs each step: dvc.yaml's chain (prepare, train on 2 processes, benchmark, gate, export,
triton-repo) on local paths and on s3:// URLs side by side, wall time and bytes read and written per step.

The S3-protocol server is moto on loopback, run in this process behind a WSGI counter, so the s3 figures are
what crossed the wire, from every process of a step (torchrun's ranks and loader workers included):

  s3 read      bytes of GET response bodies (objects, ranges of them, and listings)
  s3 written   bytes of PUT/POST request bodies (x-amz-decoded-content-length when the upload is aws-chunked)
  requests     every request: GET (listings too), HEAD, PUT, POST, DELETE (by method in --json)

Local reads and writes have no wire; they are counted in a third run of the chain, under `strace -f -y` (the timed
runs are not traced): the bytes that read, write, sendfile and copy_file_range calls on files under the work
folder returned, plus the length of each file mapped into memory, once per file (safetensors maps the weights
rather than reading them). Reads served by the page cache count, as they would from a disk. An s3 run's local
copies of remote inputs lie in temporary folders outside the work folder, so the s3 columns hold the wire alone.
Local and s3 runs alternate step by step, so that load on a shared machine hits both alike; every wall time
includes the command's start-up (Python and imports, a few seconds), the same on both sides.

    python benchmarks/object_store_cost.py                       # ~3 minutes on 2 cores
    python benchmarks/object_store_cost.py --samples 4000 --steps 60 --json cost.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "kubeclip-cost"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
# The calls that move file bytes, and the role of each file descriptor they name in turn: read from or written to.
# mmap returns an address: its length argument counts. shutil.copyfile moves bytes with sendfile.
TRACED = {"read": "r", "pread64": "r", "readv": "r", "preadv": "r", "write": "w", "pwrite64": "w", "writev": "w",
          "pwritev": "w", "sendfile": "wr", "copy_file_range": "rw", "mmap": "r"}
FD_PATH = re.compile(r"\d+<([^>]*)>")  # a descriptor as `strace -y` names it: 5</tmp/x/model.onnx>
RESULT = re.compile(r"\)\s+= (\S+)")


class CountingApp:
    """WSGI middleware around moto: request body bytes of uploads, response body bytes of downloads, requests."""

    def __init__(self, app):
        self.app, self.lock, self.counts = app, threading.Lock(), Counter()

    def take(self) -> Counter:
        """The counts since the last call."""
        with self.lock:
            counts, self.counts = self.counts, Counter()
        return counts

    def add(self, key: str, value: int) -> None:
        with self.lock:
            self.counts[key] += value

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        self.add(f"{method} requests", 1)
        if method in ("PUT", "POST"):
            length = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH") or 0
            self.add("written", int(length))
        body = self.app(environ, start_response)
        return self._counted(body) if method == "GET" else body

    def _counted(self, body):
        try:
            for chunk in body:
                self.add("read", len(chunk))
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()


def start_moto() -> tuple[str, CountingApp]:
    """moto's S3 on a free loopback port in a thread of this process; returns its endpoint and counter."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    counting = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", counting


def chain(root: str, params: Path) -> list[tuple[str, list[str]]]:
    """dvc.yaml's stages up to the package, as `kubeclip` arguments, with every folder under `root`."""
    data, train, bench, export, repo = (f"{root}/{n}" for n in ("data", "train", "benchmark", "export", "repository"))
    flags = ["--params", str(params)]
    return [("prepare", ["prepare", "synthetic", *flags, "--out", data]),
            ("train", ["train", *flags, "--nproc-per-node", "2", "--data", data, "--out", train]),
            ("benchmark", ["benchmark", *flags, "--checkpoint", train, "--classification", f"{data}/eval/compositions",
                           "--out", bench]),
            ("gate", ["gate", *flags, "--candidate", f"{bench}/metrics.json"]),
            ("export", ["export", *flags, "--checkpoint", train, "--out", export]),
            ("triton-repo", ["triton-repo", *flags, "--export", export, "--out", repo])]


def run(args: list[str], env: dict[str, str], cwd: Path, prefix: tuple[str, ...] = ()) -> float:
    """Wall seconds of `kubeclip ARGS`; a failure stops the benchmark with the command's output."""
    started = time.perf_counter()
    done = subprocess.run([*prefix, sys.executable, "-m", "kubeclip.components.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"kubeclip {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


def traced_bytes(trace: Path, under: Path) -> tuple[int, int]:
    """(read, written) bytes of files under `under`: what the calls of TRACED on them returned, and the length of
    each file mapped into memory (once per file). `trace` is `strace -f -y` output, whose calls that another thread
    interrupted come in two lines (`<unfinished ...>`, then `<... NAME resumed>`)."""
    totals, mapped, pending = {"r": 0, "w": 0}, set(), {}
    for line in trace.read_text().splitlines():
        pid, _, call = line.partition(" ")
        call = call.strip()
        if call.endswith("<unfinished ...>"):
            pending[pid] = call.removesuffix("<unfinished ...>")
            continue
        if call.startswith("<..."):
            call = pending.pop(pid, "") + call.split("resumed>", 1)[-1]
        name, _, args = call.partition("(")
        result = RESULT.search(call)
        if name not in TRACED or not result or result.group(1).startswith("-"):  # -1 ENOENT (...): failed
            continue
        paths = FD_PATH.findall(args)
        if name == "mmap":
            if paths and paths[0].startswith(f"{under}/") and paths[0] not in mapped:
                mapped.add(paths[0])
                totals["r"] += int(args.split(", ")[1])
            continue
        for role, path in zip(TRACED[name], paths):
            if path.startswith(f"{under}/"):
                totals[role] += int(result.group(1))
    return totals["r"], totals["w"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="synthetic training scenes (4 captions each)")
    parser.add_argument("--eval-samples-per-class", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40, help="training steps (2 processes, params.yaml's batch)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import boto3

    endpoint, counter = start_moto()
    boto3.client("s3", endpoint_url=endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                 aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
    with tempfile.TemporaryDirectory(prefix="kubeclip-cost-") as tmp:
        work = Path(tmp)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["prepare"].update(samples=args.samples, eval_samples_per_class=args.eval_samples_per_class)
        params["train"].update(steps=args.steps, checkpoint_every=max(1, args.steps // 2))
        params["gate"]["min"] = ["zeroshot.top1=0.0"]  # the cost is measured whatever the model learnt
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
        envs = {side: {**clean, "XDG_CACHE_HOME": str(work / f"cache-{side}")} for side in ("local", "s3", "traced")}
        envs["s3"].update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)

        rows = {}
        sides = zip(chain(str(work / "local"), work / "params.yaml"), chain(f"s3://{BUCKET}", work / "params.yaml"))
        for (name, local_args), (_, s3_args) in sides:
            local_seconds = run(local_args, envs["local"], work)
            counter.take()
            s3_seconds = run(s3_args, envs["s3"], work)
            counts = counter.take()
            rows[name] = {"local_seconds": local_seconds, "s3_seconds": s3_seconds, "s3_read": counts["read"],
                          "s3_written": counts["written"],
                          "s3_requests": {k.split()[0]: v for k, v in counts.items() if k.endswith("requests")}}
            print(f"{name}: local {local_seconds:.1f} s, s3 {s3_seconds:.1f} s", file=sys.stderr)
        for name, traced_args in chain(str(work / "traced"), work / "params.yaml"):
            trace = work / f"{name}.strace"
            run(traced_args, envs["traced"], work, ("strace", "-f", "--seccomp-bpf", "-qq", "-y", "-s", "0", "-o",
                                                    str(trace), "-e", "trace=" + ",".join(TRACED)))
            rows[name]["local_read"], rows[name]["local_written"] = traced_bytes(trace, work / "traced")
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"arguments": {**vars(args), "json": str(args.json)}, "steps": rows},
                                        indent=2) + "\n")


def print_table(rows: dict[str, dict], args: argparse.Namespace) -> None:
    def ratio(s3: float, local: float) -> str:
        return f"{s3 / local:.2f}x" if local else "-"

    print(f"# python benchmarks/object_store_cost.py --samples {args.samples} --eval-samples-per-class "
          f"{args.eval_samples_per_class} --steps {args.steps}")
    print(f"{'step':<12} {'local s':>8} {'s3 s':>7} {'s3/local':>8}   {'read MB':>7} {'s3 MB':>7} {'s3/local':>8}   "
          f"{'written MB':>10} {'s3 MB':>7} {'s3/local':>8}   {'s3 requests':>11}")
    for name, r in rows.items():
        seconds, read, written = (ratio(r[f"s3_{k}"], r[f"local_{k}"]) for k in ("seconds", "read", "written"))
        print(f"{name:<12} {r['local_seconds']:8.1f} {r['s3_seconds']:7.1f} {seconds:>8}   "
              f"{r['local_read'] / 1e6:7.2f} {r['s3_read'] / 1e6:7.2f} {read:>8}   "
              f"{r['local_written'] / 1e6:10.2f} {r['s3_written'] / 1e6:7.2f} {written:>8}   "
              f"{sum(r['s3_requests'].values()):11d}")
    total = {k: sum(r[k] for r in rows.values()) for k in ("local_seconds", "s3_seconds")}
    print(f"{'chain':<12} {total['local_seconds']:8.1f} {total['s3_seconds']:7.1f} "
          f"{ratio(total['s3_seconds'], total['local_seconds']):>8}")


if __name__ == "__main__":
    main()
