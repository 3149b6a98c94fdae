"""Writing to a local folder or an fsspec URL (s3://, gs://, ...) so that a reader never sees half a file."""

from __future__ import annotations

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
