"""Every step on s3:// URLs, end to end, against a real S3-protocol server (moto on loopback): the console script
prepares, trains (2 processes), benchmarks, gates, exports and packages with every input and output in the bucket;
KServe's own storage-initializer code then downloads the repository as a predictor pod would, and a real Triton
serving it answers a zero-shot query as PyTorch does from the checkpoint in the bucket. Nothing is written outside
temporary folders: the steps run in an empty working folder, which stays empty.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from kubeclip import model
from kubeclip.components.benchmark.encoders import TorchEncoder
from kubeclip.components.datasets import class_names, labelled_images
from kubeclip.components.lineage import chain
from kubeclip.components.prepare.synthetic import COMPOSITION_TEMPLATES
from kubeclip.components.serve.encoder import TritonEncoder, zero_shot
from kubeclip.components.serve.triton_server import TritonServer, free_port
from tests.conftest import ROOT

BUCKET = "kubeclip-e2e"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3:
    """The server's endpoint, the environment that points the steps at it, and a filesystem on it for the
    test itself (given the endpoint explicitly, so this pytest process's environment stays as it was)."""

    def __init__(self, endpoint: str, cache: Path):
        import s3fs

        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
        self.env = {**inherited, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "XDG_CACHE_HOME": str(cache)}
        self.fs = s3fs.S3FileSystem(endpoint_url=endpoint, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                    secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def files(self, url: str) -> list[str]:
        """The keys under `url`, relative to it."""
        root = url.removeprefix("s3://").rstrip("/")
        return sorted(path[len(root) + 1:] for path in self.fs.find(root))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto_server on a free loopback port, with one bucket; stopped when the module's tests are done."""
    import boto3

    port, folder = free_port(), tmp_path_factory.mktemp("moto")
    endpoint = f"http://127.0.0.1:{port}"
    with open(folder / "moto.log", "wb") as log:
        command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto_server did not start: {(folder / 'moto.log').read_text()}") from None
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                     region_name=CREDENTIALS["AWS_DEFAULT_REGION"]).create_bucket(Bucket=BUCKET)
        yield S3(endpoint, tmp_path_factory.mktemp("cache"))
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def kubeclip(s3, tmp_path):
    """Runs `kubeclip ARGS` (the console script's module) pointed at the server, in an empty working folder;
    returns its stdout. The folder must stay empty: a step that wrote a local file would show there."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "kubeclip.components.cli", *args], cwd=workdir, env=s3.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"kubeclip {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        return done.stdout

    yield run
    assert not any(workdir.iterdir()), sorted(p.name for p in workdir.iterdir())


def untracked() -> set[str]:
    """Files in the working tree that git does not know (nor ignores)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return {line[3:] for line in out.splitlines() if line.startswith("??")}


def local_runs() -> list[Path]:
    return sorted((ROOT / "runs").rglob("*"))


def test_the_chain_runs_on_s3_and_kserve_serves_what_it_packaged(s3, kubeclip, tmp_path):
    tree_before, runs_before = untracked(), local_runs()
    root = f"s3://{BUCKET}/chain"
    data, train, bench, export, repo = (f"{root}/{name}" for name in ("data", "train", "benchmark", "export",
                                                                      "repository"))
    # dvc.yaml's chain with params.yaml's sections, at the sizes of tests/test_dvc.py
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update(samples=48, eval_samples_per_class=4, shard_size=16)
    params["train"].update(steps=3, batch_size=8, workers=0, checkpoint_every=2)
    params["gate"]["min"] = ["zeroshot.top1=0.0"]  # three steps learn nothing; the chain must still run
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    flags = ["--params", str(tmp_path / "params.yaml")]

    kubeclip("prepare", "synthetic", *flags, "--out", data)
    kubeclip("train", *flags, "--nproc-per-node", "2", "--data", data, "--out", train)
    kubeclip("benchmark", *flags, "--checkpoint", train, "--classification", f"{data}/eval/compositions",
             "--out", bench)
    assert "quality gate passed" in kubeclip("gate", *flags, "--candidate", f"{bench}/metrics.json")
    kubeclip("export", *flags, "--checkpoint", train, "--out", export, "--parity-images", "16")
    summary = json.loads(kubeclip("triton-repo", *flags, "--export", export, "--out", repo))

    assert json.loads(s3.fs.cat_file(f"{data}/manifest.json"))["rows_in"] == 4 * 48
    assert s3.fs.cat_file(f"{train}/checkpoints/latest").decode().strip() == "step-00000003"
    assert "COMMITTED" in s3.files(f"{train}/checkpoints/step-00000003")
    assert json.loads(s3.fs.cat_file(f"{export}/export_report.json"))["gates"]
    lineage = json.loads(s3.fs.cat_file(f"{repo}/lineage.json"))
    assert [s["step"] for s in chain(lineage)] == ["triton-repo", "export", "train", "prepare synthetic"]
    metrics = json.loads(s3.fs.cat_file(f"{bench}/metrics.json"))
    assert summary["model_id"] == metrics["model"]["id"] and summary["repository"] == repo

    # the predictor pod's storage initializer: KServe's own code, in a process of its own as in the pod
    served = tmp_path / "served"
    download = "import sys; from kserve_storage import Storage; Storage.download(sys.argv[1], sys.argv[2])"
    done = subprocess.run([sys.executable, "-c", download, repo, str(served)], cwd=tmp_path / "cwd", env=s3.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.relative_to(served).as_posix() for p in served.rglob("*") if p.is_file()) == s3.files(repo)

    # the checkpoint and the evaluation set, as the test's own reference reads them from the bucket
    name = s3.fs.cat_file(f"{train}/checkpoints/latest").decode().strip()
    s3.fs.get(f"{train}/checkpoints/{name}/", str(tmp_path / "checkpoint"), recursive=True)
    s3.fs.get(f"{data}/eval/compositions/", str(tmp_path / "eval"), recursive=True)
    images = [image for _, image, _ in itertools.islice(labelled_images(str(tmp_path / "eval")), 12)]
    labels, templates = class_names(str(tmp_path / "eval")), list(COMPOSITION_TEMPLATES)
    reference = TorchEncoder(model.load(tmp_path / "checkpoint"))
    expected = zero_shot(reference, images, labels, templates)

    with TritonServer(served, log_file=tmp_path / "triton.log", exit_timeout=2) as server:
        encoder = TritonEncoder(server.http_url, "http")
        try:
            answered = zero_shot(encoder, images, labels, templates)
            image_cosine = torch.cosine_similarity(encoder.encode_images(images), reference.encode_images(images))
            text_cosine = torch.cosine_similarity(encoder.encode_texts(labels), reference.encode_texts(labels))
        finally:
            encoder.close()
    assert torch.allclose(answered, expected, atol=1e-4), (answered - expected).abs().max()
    assert image_cosine.min() >= 0.9999 and text_cosine.min() >= 0.9999

    assert not untracked() - tree_before, untracked() - tree_before  # nothing landed in the checkout
    assert local_runs() == runs_before


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_prepare_reads_captions_and_labelled_images_from_s3_and_merges_partitions_there(s3, kubeclip):
    root = f"s3://{BUCKET}/prepare"
    colours = [(40 * i, 255 - 30 * i, 90) for i in range(8)]
    s3.fs.pipe({f"{BUCKET}/prepare/raw/images/{i}.png": _png(c) for i, c in enumerate(colours)})
    s3.fs.pipe({f"{BUCKET}/prepare/raw/captions.tsv": "image\tcaption\n".encode() + "".join(
                    f"images/{i}.png\ta square of colour {i}\n" for i in range(8)).encode(),
                f"{BUCKET}/prepare/raw/labels.csv": b"path,label,class_name\n" + "".join(
                    f"images/{i}.png,{i % 2},{('even', 'odd')[i % 2]}\n" for i in range(8)).encode(),
                f"{BUCKET}/prepare/raw/classes.txt": b"even\nodd\n"})
    small = ["--workers", "2", "--shard-size", "4", "--image-size", "16"]

    kubeclip("prepare", "captions", *small, "--captions", f"{root}/raw/captions.tsv", "--images", f"{root}/raw",
             "--out", f"{root}/captions")
    kubeclip("prepare", "classification", *small, "--root", f"{root}/raw", "--out", f"{root}/classes")
    for part in ("0/2", "1/2"):
        kubeclip("prepare", "synthetic", *small, "--samples", "12", "--eval-samples-per-class", "1", "--partition",
                 part, "--out", f"{root}/part{part[0]}")
    kubeclip("prepare", "merge", "--out", f"{root}/merged", f"{root}/part0", f"{root}/part1")

    captions = json.loads(s3.fs.cat_file(f"{root}/captions/manifest.json"))
    assert captions["rows_written"] == 8 and captions["complete"]
    classes = json.loads(s3.fs.cat_file(f"{root}/classes/manifest.json"))
    assert classes["rows_written"] == 8 and classes["classes"] == ["even", "odd"]
    merged = json.loads(s3.fs.cat_file(f"{root}/merged/manifest.json"))
    assert merged["rows_in"] == merged["rows_written"] == 4 * 12
    assert {"eval/compositions/manifest.json", "train/shard-000000.tar"} <= set(s3.files(f"{root}/merged"))
