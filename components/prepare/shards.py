"""The output folder of a prepare run: deterministic tar shards, per-shard reject ledgers, the manifest.

A shard counts as done once its entry is committed in `manifest.json`; the manifest is rewritten
whole after each shard, so a killed run leaves either the old or the new one, on object stores too.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from typing import Any

import fsspec

from components.storage import atomic_write

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"


def tar_bytes(files: list[tuple[str, bytes]]) -> bytes:
    """A ustar archive of `files` in the given order with fixed metadata, so the same input gives the same
    bytes. Headers are written directly: tarfile spends more time on them than on the data."""
    blocks = []
    for name, data in files:
        encoded = name.encode()
        if len(encoded) > 100 or not encoded.isascii():
            raise ValueError(f"tar member name {name!r} is not a short ASCII name")
        header = bytearray(512)
        header[:len(encoded)] = encoded
        header[100:157] = b"0000644\x000000000\x000000000\x00%011o\x00%011o\x00        0" % (len(data), 0)
        header[257:265] = b"ustar\x0000"
        header[148:156] = b"%06o\x00 " % sum(header)
        blocks += [header, data, bytes(-len(data) % 512)]
    archive = b"".join(blocks) + bytes(1024)  # two zero blocks end the archive
    return archive + bytes(-len(archive) % tarfile.RECORDSIZE)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Output:
    """A local folder or fsspec URL, written file by file, each write atomic."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def write(self, name: str, data: bytes) -> None:
        atomic_write(self.fs, self.path(name), data)

    def read(self, name: str) -> bytes | None:
        return self.fs.cat_file(self.path(name)) if self.fs.exists(self.path(name)) else None

    def write_json(self, name: str, value: Any) -> None:
        self.write(name, (json.dumps(value, indent=2) + "\n").encode())

    def read_json(self, name: str) -> Any:
        data = self.read(name)
        return None if data is None else json.loads(data)

    def write_jsonl(self, name: str, records: list[dict]) -> None:
        self.write(name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())

    def read_jsonl(self, name: str) -> list[dict]:
        data = self.read(name)
        return [] if data is None else [json.loads(line) for line in data.decode().splitlines() if line]
