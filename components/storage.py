"""Local folders and fsspec URLs (s3://, gs://, ...) alike, for every step: writes a reader never sees half of,
local working copies of remote inputs, outputs built in a local folder and then published, and the mapping of
KFP artifact URIs to URLs that fsspec and KServe read.

An s3:// store other than AWS's own (MinIO, Ceph, ...) is found through the standard AWS variables
(`AWS_ENDPOINT_URL`, or `AWS_ENDPOINT_URL_S3` for S3 alone) or fsspec's configuration
(`FSSPEC_S3_ENDPOINT_URL`); credentials come as boto3 finds them.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec import AbstractFileSystem


def is_local(fs: AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def atomic_write(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` in one step: a rename on local disks; an object store's put is atomic by itself."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    fs.pipe_file(path + ".tmp", data)
    fs.mv(path + ".tmp", path)


@contextmanager
def local_copy(url: str, only: Sequence[str] = ()) -> Iterator[str]:
    """A local path holding what the file or folder `url` holds, for code that needs real files (model.load,
    torch.load, ONNX Runtime, onnx.load): `url` itself when it is local, else a download into a temporary
    folder, removed on exit. `only`: the names inside the folder `url` to fetch (those that exist), when the
    rest is not needed (a checkpoint's weights without its training state)."""
    fs, path = fsspec.core.url_to_fs(url)
    path = path.rstrip("/")
    if is_local(fs):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kubeclip-in-") as tmp:
        local = str(Path(tmp) / (posixpath.basename(path) or "root"))
        if only:
            Path(local).mkdir()
            for name in only:
                if fs.exists(f"{path}/{name}"):
                    fs.get(f"{path}/{name}", str(Path(local) / name), recursive=True)
        elif fs.isfile(path):
            fs.get_file(path, local)
        else:
            fs.get(f"{path}/", local, recursive=True)
        yield local


def publish(local: str | Path, url: str, last: Sequence[str] = (), replace: Sequence[str] = ()) -> None:
    """Copy the folder `local` into `url`, the files named in `last` (relative names) after all the others,
    in that order: a reader that waits for a marker (COMMITTED, lineage.json) never sees it before what it
    vouches for. `replace`: folders under `url` removed first, so that they hold exactly the new files."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    for name in replace:
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}", recursive=True)
    names = sorted(p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file())
    first = [n for n in names if n not in last]
    for folder in sorted({posixpath.dirname(f"{root}/{n}") for n in names}):
        fs.makedirs(folder, exist_ok=True)  # a no-op on object stores
    if first:  # one call: s3fs uploads the files concurrently
        fs.put([str(Path(local) / n) for n in first], [f"{root}/{n}" for n in first])
    for name in (n for n in last if n in names):
        fs.put_file(str(Path(local) / name), f"{root}/{name}")


@contextmanager
def local_output(url: str, last: Sequence[str] = (), replace: Sequence[str] = ()) -> Iterator[Path]:
    """A local folder to build the output `url` in: `url` itself when it is local, else a temporary folder
    published to `url` (see `publish`) when the block ends without an exception, so a failed step publishes
    nothing. `replace`: folders under `url` the output replaces whole, emptied before it is written there."""
    fs, root = fsspec.core.url_to_fs(url)
    if is_local(fs):
        for name in replace:
            shutil.rmtree(Path(root) / name, ignore_errors=True)
        Path(root).mkdir(parents=True, exist_ok=True)
        yield Path(root)
        return
    with tempfile.TemporaryDirectory(prefix="kubeclip-out-") as tmp:
        yield Path(tmp)
        publish(tmp, url, last, replace)


def storage_uri(uri: str) -> str:
    """A KFP artifact URI as fsspec and KServe's `storageUri` take it. KFP v2's default pipeline root,
    `minio://mlpipeline/v2/artifacts`, has a scheme neither knows; MinIO speaks S3, so `minio://bucket/key`
    becomes `s3://bucket/key`, read at the endpoint the reader's environment names (AWS_ENDPOINT_URL, e.g.
    the cluster's MinIO service). s3:// and gs:// URIs and local paths pass unchanged; other schemes raise."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme in ("file", "s3", "gs"):
        return uri
    if scheme == "minio":
        return f"s3://{rest}"
    raise ValueError(f"artifact URI {uri!r}: kubeclip reads and serves artifacts from s3:// (MinIO included) or "
                     f"gs:// only; run the pipeline with an object-store root, e.g. `kubeclip pipeline run "
                     "--pipeline-root s3://bucket/prefix`")
