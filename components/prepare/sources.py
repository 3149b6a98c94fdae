"""Input rows and where their images come from, one reader per source format.

A reader yields `Row`s, or `Reject`s for rows it cannot parse: one malformed row never fails the file.
An image store turns a row's image name into bytes and a content fingerprint, inside worker processes.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import tarfile
import unicodedata
from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple
from pathlib import PurePosixPath

import fsspec

from kubeclip.components.prepare import synthetic
from kubeclip.components.prepare.images import Rejected, read_file


class Row(NamedTuple):  # a tuple: there are millions, made and passed around fast
    row: int  # the record's index in its source, 0-based, header excluded
    source: str  # the file it came from
    image: str  # the image's name: a path under the images root, or a tar member
    caption: str | None = None
    label: int | None = None


class Reject(NamedTuple):
    row: int
    source: str
    reason: str
    detail: str


def _not_utf8(text: str) -> bool:
    """Whether `text` cannot be written as UTF-8: bytes that were not UTF-8 (kept as lone surrogates by
    surrogateescape) or lone surrogates from JSON escapes like "\\ud800"."""
    return not text.isascii() and any("\ud800" <= ch <= "\udfff" for ch in text)


def _check_image_name(row: Row | Reject) -> Row | Reject:
    if isinstance(row, Row) and _not_utf8(row.image):
        return Reject(row.row, row.source, "invalid_utf8", "the image path holds bytes that are not valid UTF-8")
    return row


def clean_caption(text: str, max_chars: int) -> str:
    """Unescape HTML, drop control and format characters, collapse whitespace; Rejected when nothing is left."""
    if _not_utf8(text):
        raise Rejected("invalid_utf8", "the caption holds bytes that are not valid UTF-8")
    if "&" in text:
        text = html.unescape(html.unescape(text))
    if not (text.isascii() and text.isprintable()):  # the per-character pass only where it can change something
        text = "".join(" " if ch.isspace() else ch for ch in text
                       if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))
    text = " ".join(text.split())
    if not text:
        raise Rejected("empty_caption", "the caption is empty after cleaning")
    if len(text) > max_chars:
        raise Rejected("caption_too_long", f"{len(text)} characters, over --max-caption-chars {max_chars}")
    return text


# --------------------------------------------------------------------------- readers

def caption_rows(path: str, image_column: str, caption_column: str) -> Iterator[Row | Reject]:
    """A TSV/CSV with a header row, or JSON lines, of (image, caption) records; format by extension."""
    source = PurePosixPath(path).name
    with fsspec.open(path, "rb") as f:
        data = f.read()
    if path.endswith((".jsonl", ".json")):
        yield from _jsonl_rows(data, source, image_column, caption_column)
        return
    text = data.decode("utf-8", errors="surrogateescape")  # bad bytes survive to be rejected row by row
    records = (r for r in csv.reader(io.StringIO(text, newline=""), delimiter="\t" if path.endswith(".tsv") else ",")
               if r)  # blank lines are no records
    header = next(records, [])
    missing = {image_column, caption_column} - set(header)
    if missing:
        raise SystemExit(f"{path}: no column {sorted(missing)} in the header {header}; "
                         "name them with --image-column / --caption-column")
    image_at, caption_at = header.index(image_column), header.index(caption_column)
    for index, record in enumerate(records):
        if len(record) != len(header):
            yield Reject(index, source, "malformed_row", f"expected {len(header)} fields, found {len(record)}")
        else:
            yield _check_image_name(Row(index, source, record[image_at], caption=record[caption_at]))


def _jsonl_rows(data: bytes, source: str, image_key: str, caption_key: str) -> Iterator[Row | Reject]:
    lines = (line for line in data.splitlines() if line.strip())  # blank lines are no records, as in CSV
    for index, line in enumerate(lines):
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield Reject(index, source, "invalid_utf8", "the line holds bytes that are not valid UTF-8")
            continue
        except json.JSONDecodeError as e:
            yield Reject(index, source, "malformed_row", f"not JSON: {e}")
            continue
        if not isinstance(record, dict) or not isinstance(record.get(image_key), str) \
                or not isinstance(record.get(caption_key), str):
            yield Reject(index, source, "malformed_row", f"expected an object with string {image_key!r} and "
                                                         f"{caption_key!r}")
        else:
            yield _check_image_name(Row(index, source, record[image_key], caption=record[caption_key]))


def split_lists(split_files: list[str]) -> dict[str, str]:
    """image name -> split, from `NAME=FILE` arguments (one image name per line)."""
    splits: dict[str, str] = {}
    for item in split_files:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--split-files takes NAME=FILE, got {item!r}")
        with fsspec.open(path, "r") as f:
            for line in f:
                if line.strip():
                    splits.setdefault(line.strip(), name)
    return splits


def coco_rows(path: str) -> Iterator[Row | Reject]:
    """One row per caption annotation of a COCO captions file (`images` with `file_name`, `annotations`)."""
    source = PurePosixPath(path).name
    with fsspec.open(path, "rb") as f:
        data = json.load(f)
    files = {image.get("id"): image.get("file_name") for image in data.get("images", [])
             if isinstance(image, dict) and isinstance(image.get("id"), (int, str))}
    for index, note in enumerate(data.get("annotations", [])):
        image_id = note.get("image_id") if isinstance(note, dict) else None
        name = files.get(image_id) if isinstance(image_id, (int, str)) else None
        if not isinstance(name, str) or not isinstance(note.get("caption"), str):
            yield Reject(index, source, "malformed_row", "an annotation needs a known image_id and a string caption")
        else:
            yield _check_image_name(Row(index, source, name, caption=note["caption"]))


def classification_rows(root: str) -> tuple[list[str], Iterator[Row | Reject]]:
    """The class names of `root/classes.txt` and the rows of `root/labels.csv` (path,label,class_name)."""
    with fsspec.open(f"{root}/classes.txt", "r") as f:
        classes = [line.strip() for line in f if line.strip()]

    def rows() -> Iterator[Row | Reject]:
        for row in caption_rows(f"{root}/labels.csv", "path", "label"):
            if isinstance(row, Reject):
                yield row
            elif not row.caption.strip().isdecimal() or int(row.caption) >= len(classes):
                yield Reject(row.row, row.source, "bad_label", f"label {row.caption!r} is not in 0..{len(classes) - 1}")
            else:
                yield Row(row.row, row.source, row.image, label=int(row.caption))
    return classes, rows()


# --------------------------------------------------------------------------- image stores

class FileStore:
    """Images under a root folder or URL; names stay inside it."""

    def __init__(self, root: str):
        self.root = root

    def read(self, name: str) -> bytes:
        return read_file(self.root, name)

    def fingerprint(self, name: str) -> str:
        return hashlib.sha256(self.read(name)).hexdigest()


class SyntheticStore:
    """Scenes drawn on demand from their key: nothing is read, and content is unique by construction."""

    MAKERS = {"syn": synthetic.training_pair, "syncomp": synthetic.composition_sample,
              "syncount": synthetic.count_sample}

    def __init__(self, seed: int, size: int):
        self.seed, self.size = seed, size

    def read(self, name: str) -> bytes:
        prefix, index = name.rsplit("-", 1)
        buffer = io.BytesIO()
        self.MAKERS[prefix](int(index), self.seed, self.size).image.save(buffer, "PNG")
        return buffer.getvalue()

    def fingerprint(self, name: str) -> str:
        return hashlib.sha256(f"{self.seed}/{self.size}/{name}".encode()).hexdigest()


def synthetic_rows(samples: int, seed: int, size: int) -> Iterator[Row]:
    for index in range(samples):
        pair = synthetic.training_pair(index, seed, size)
        for caption in pair.captions:
            yield Row(index, "synthetic", pair.key, caption=caption)


def synthetic_eval_rows(name: str, samples_per_class: int, seed: int, size: int) -> tuple[list[str], Iterator[Row]]:
    make_set = {"compositions": synthetic.composition_set, "counts": synthetic.count_set}[name]
    classes, images = make_set(samples_per_class, seed, size)
    return classes, (Row(i, f"synthetic-{name}", image.key, label=image.label) for i, image in enumerate(images))


class TarStore:
    """Members of WebDataset tars, read by (url, offset, size, compression) recorded while listing them;
    offsets of a compressed tar count in its decompressed stream."""

    def __init__(self, members: dict[str, tuple[str, int, int, str | None]]):
        self.members = members

    def read(self, name: str) -> bytes:
        url, offset, size, compression = self.members[name]
        with fsspec.open(url, "rb", compression=compression) as f:
            f.seek(offset)
            return f.read(size)

    def fingerprint(self, name: str) -> str:
        return hashlib.sha256(self.read(name)).hexdigest()


IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}  # what tarfile's "r|*" opens


def _compression(url: str) -> str | None:
    with fsspec.open(url, "rb") as f:
        head = f.read(6)
    return next((name for magic, name in COMPRESSION_MAGIC.items() if head.startswith(magic)), None)


def webdataset_rows(urls: list[str]) -> tuple[TarStore, Iterator[Row | Reject]]:
    """Samples of WebDataset tars (`<key>.<image ext>` + `<key>.txt` or `.json` captions), listed without
    extracting anything: member names are never used as paths."""
    members: dict[str, tuple[str, int, int, str | None]] = {}
    basenames = Counter(PurePosixPath(url).name for url in urls)

    def rows() -> Iterator[Row | Reject]:
        index = 0
        for url in urls:
            source = PurePosixPath(url).name
            prefix = source if basenames[source] == 1 else url  # tars of one name in two folders stay apart
            samples: dict[str, dict[str, tarfile.TarInfo]] = {}
            texts: dict[tuple[str, str], bytes] = {}  # (key, "txt" | "json") -> content
            compression = _compression(url)
            with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    path = PurePosixPath(info.name)
                    stem, _, ext = path.name.partition(".")
                    key = str(path.parent / stem)  # WebDataset: the key ends at the first dot of the base name
                    samples.setdefault(key, {})[ext.lower()] = info
                    if ext.lower() in ("txt", "json"):  # small; images stay in the tar
                        texts[key, ext.lower()] = tar.extractfile(info).read()
            for key, files in samples.items():
                name = f"{prefix}#{key}"
                parts = PurePosixPath(key).parts
                if key.startswith("/") or ".." in parts:
                    yield Reject(index, source, "unsafe_path", f"tar member {key!r} leaves the archive root")
                    index += 1
                    continue
                if _not_utf8(key):
                    yield Reject(index, source, "invalid_utf8", f"tar member name {key!r} is not valid UTF-8")
                    index += 1
                    continue
                image = next((files[e] for e in IMAGE_SUFFIXES if e in files), None)
                captions = _tar_captions(texts.get((key, "txt")), texts.get((key, "json")))
                if image is None or not captions:
                    yield Reject(index, source, "malformed_row",
                                 f"sample {key!r} needs an image and a .txt or .json caption")
                    index += 1
                    continue
                members[name] = (url, image.offset_data, image.size, compression)
                for caption in captions:
                    yield Row(index, source, name, caption=caption)
                    index += 1
    return TarStore(members), rows()


def _tar_captions(txt: bytes | None, meta_json: bytes | None) -> list[str]:
    if meta_json is not None:
        try:
            meta = json.loads(meta_json)
            captions = meta.get("captions")
            captions = [c for c in captions if isinstance(c, str)] if isinstance(captions, list) else []
            if captions:  # else fall back to "caption" or the .txt
                return captions
            if isinstance(meta.get("caption"), str):
                return [meta["caption"]]
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
    if txt is not None:
        return [txt.decode("utf-8", errors="surrogateescape")]
    return []
