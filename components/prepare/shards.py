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

from kubeclip.components.storage import atomic_write

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"


# The fixed parts of a member header around its name, size and checksum: mode, uid, gid; after the size its
# terminator and mtime 0; type 0 (a file); the ustar magic. The rest is zero; the checksum sums the header's
# bytes with its own field as 8 spaces.
_IDS = b"0000644\x000000000\x000000000\x00"
_MTIME = b"\x0000000000000\x00"
_MAGIC = b"ustar\x0000"
_FIXED_SUM = sum(_IDS) + sum(_MTIME) + 8 * ord(" ") + ord("0") + sum(_MAGIC)


def tar_members(files: list[tuple[str, bytes]]) -> bytes:
    """`files` as ustar members in the given order with fixed metadata, so the same input gives the same
    bytes. Headers are written directly (tarfile spends more time on them than on the data), their checksum
    summed over the name and size only. Members of several calls concatenate; `tar_archive` closes them."""
    blocks = []
    for name, data in files:
        encoded = name.encode()
        if len(encoded) > 100 or not encoded.isascii():
            raise ValueError(f"tar member name {name!r} is not a short ASCII name")
        size = b"%011o" % len(data)
        checksum = _FIXED_SUM + sum(encoded) + sum(size)
        header = b"".join([encoded.ljust(100, b"\0"), _IDS, size, _MTIME, b"%06o\x00 0" % checksum, bytes(100),
                           _MAGIC, bytes(247)])
        blocks += [header, data, bytes(-len(data) % 512)]
    return b"".join(blocks)


def tar_archive(members: list[bytes]) -> bytes:
    """One archive of `tar_members` outputs: two zero blocks end it, padded to a whole tar record."""
    size = sum(map(len, members)) + 1024
    return b"".join([*members, bytes(1024 + -size % tarfile.RECORDSIZE)])


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
