"""Bad input to `prepare`: every good row is written, every bad row is in rejects.jsonl with a specific
reason, nothing is written outside --out, and rows_in == rows_written + rows rejected, for every source."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from kubeclip.components.prepare import step

pytestmark = pytest.mark.timeout(120)  # a worker pool that loses a result hangs: fail instead

IMAGE_SIZE = 64
RED, GREEN, BLUE, MAGENTA, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 0, 255), (255, 255, 255)


class Reason(str):
    """The reject reason a row must get; any other expectation is the caption it must be written with."""


# One row per line of captions.tsv: (image, caption, what must happen). Bytes are written as they are,
# None leaves the caption field out. The row number is the position in this list.
TSV_ROWS: list[tuple[str | bytes, str | bytes | None, str]] = [
    ("good.jpg", "a red bus", "a red bus"),
    ("copy_of_good.jpg", "the same bus under another name", "the same bus under another name"),
    ("good.jpg", "a red bus", Reason("duplicate")),
    ("copy_of_good.jpg", "a  red\x0bbus", Reason("duplicate")),  # the same content and, cleaned, the same caption
    ("big.png", "a wide picture", "a wide picture"),
    ("alpha.png", "a red square beside a transparent one", "a red square beside a transparent one"),
    ("palette.png", "Tom &amp; Jerry&#39;s &lt;blue&gt; &amp;amp; green tiles", "Tom & Jerry's <blue> & green tiles"),
    ("deep16.png", "a 16-bit grey ramp", "a 16-bit grey ramp"),
    ("cmyk.jpg", "a\x07 magenta\x1b square\x7f\u200b", "a magenta square"),
    ("12:30.jpg", "a photo named by its time", "a photo named by its time"),
    ("sub/nested.jpg", "a picture in a subfolder", "a picture in a subfolder"),
    ("lonely.jpg", "", Reason("empty_caption")),  # every row of lonely.jpg is bad: it gets no sample
    ("lonely.jpg", " \u00a0 \u3000 ", Reason("empty_caption")),
    ("lonely.jpg", b"caf\xe9 au lait", Reason("invalid_utf8")),
    ("truncated.jpg", "half a picture", Reason("unreadable_image")),
    ("empty.jpg", "a zero-byte file", Reason("unreadable_image")),
    ("missing.jpg", "a picture nobody saved", Reason("missing_image")),
    ("bomb.png", "ten thousand squared pixels", Reason("too_many_pixels")),
    ("tiny.png", "a single pixel", Reason("too_small")),
    ("../outside.jpg", "a picture beside the images folder", Reason("unsafe_path")),
    ("link.jpg", "a symlink leading out of the images folder", Reason("unsafe_path")),
    ("loop.jpg", "a symlink to itself", Reason("missing_image")),
    ("x" * 300 + ".jpg", "a name too long for any file", Reason("missing_image")),
    ("/etc/hostname", "an absolute path", Reason("unsafe_path")),
    (b"caf\xe9.jpg", "an image name that is not UTF-8", Reason("invalid_utf8")),
    ("good.jpg", None, Reason("malformed_row")),
]

# The samples the TSV must give: the image's names -> its captions, in row order.
TSV_SAMPLES = {
    ("good.jpg", "copy_of_good.jpg"): ["a red bus", "the same bus under another name"],
    ("big.png",): ["a wide picture"],
    ("alpha.png",): ["a red square beside a transparent one"],
    ("palette.png",): ["Tom & Jerry's <blue> & green tiles"],
    ("deep16.png",): ["a 16-bit grey ramp"],
    ("cmyk.jpg",): ["a magenta square"],
    ("12:30.jpg",): ["a photo named by its time"],
    ("sub/nested.jpg",): ["a picture in a subfolder"],
}


# --------------------------------------------------------------------------- helpers

def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tree(*roots: Path) -> dict[Path, tuple[int, int]]:
    """Every file and link under `roots`, with its size and modification time."""
    found = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder, name)
                if path.is_symlink() or path.is_file():
                    stat = path.lstat()
                    found[path] = (stat.st_size, stat.st_mtime_ns)
    return found


def assert_written_only_under(out: Path, before: dict, after: dict) -> None:
    assert set(before) <= set(after), "the run deleted input files"
    touched = [path for path in after if before.get(path) != after[path]]
    assert touched and all(out in path.parents for path in touched), [p for p in touched if out not in p.parents]


def close(pixel: tuple, colour: tuple, tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


def read_samples(out: Path, manifest: dict) -> dict[str, dict]:
    """Every sample of every shard, read with tarfile and checked against the shard contract
    (docs/contracts.md, "Caption shards"):
    key -> {"meta": its .json, "text" or "label", "image": the decoded image}."""
    samples: dict[str, dict] = {}
    for split in manifest["splits"].values():
        assert split["samples"] == sum(entry["samples"] for entry in split["shards"])
        for entry in split["shards"]:
            data = (out / entry["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            files: dict[str, dict[str, bytes]] = {}
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar:
                    assert member.isfile() and "/" not in member.name and ".." not in member.name
                    key, _, ext = member.name.partition(".")
                    files.setdefault(key, {})[ext] = tar.extractfile(member).read()
            assert len(files) == entry["samples"]
            for key, parts in files.items():
                assert key not in samples, f"sample {key} is in two shards"
                samples[key] = check_sample(key, parts, manifest["kind"])
    return samples


def check_sample(key: str, parts: dict[str, bytes], kind: str) -> dict:
    images = [ext for ext in parts if ext in ("jpg", "png", "webp")]
    assert len(images) == 1, parts.keys()
    meta = json.loads(parts["json"])
    assert meta["id"] == key and {"source", "width", "height"} <= set(meta)
    image = Image.open(io.BytesIO(parts[images[0]]))
    assert image.mode == "RGB" and image.size == (meta["width"], meta["height"])
    assert min(image.size) <= IMAGE_SIZE
    sample = {"meta": meta, "image": image.convert("RGB")}
    if kind == "captions":
        assert set(parts) == {images[0], "txt", "json"}
        assert meta["captions"] and parts["txt"].decode() == meta["captions"][0]
        sample["text"] = meta["captions"][0]
    else:
        assert set(parts) == {images[0], "cls", "json"}
        sample["label"] = int(parts["cls"])
        assert meta["label"] == sample["label"]
    return sample


def assert_accounted(out: Path, manifest: dict, rows: int, rejects: dict[tuple[str, int], str]) -> dict[str, dict]:
    """The accounting identity; exactly one rejects.jsonl line, with its reason, per bad row; the other rows
    all written. Returns the samples."""
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["complete"] is True
    assert manifest["rows_in"] == rows
    assert manifest["rows_in"] == manifest["rows_written"] + sum(manifest["rows_rejected"].values())
    lines = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    for line in lines:
        assert set(line) == {"row", "source", "reason", "detail"} and line["detail"], line
    found = {(line["source"], line["row"]): line["reason"] for line in lines}
    assert len(found) == len(lines), "a row is rejected twice"
    assert found == rejects
    assert dict(Counter(line["reason"] for line in lines)) == manifest["rows_rejected"]
    assert manifest["rows_written"] == rows - len(rejects)
    samples = read_samples(out, manifest)
    if manifest["kind"] == "captions":
        assert sum(len(s["meta"]["captions"]) for s in samples.values()) == manifest["rows_written"]
    else:
        assert len(samples) == manifest["rows_written"]
    return samples


def by_names(samples: dict[str, dict]) -> dict[tuple[str, ...], dict]:
    return {tuple(s["meta"].get("names", [s["meta"]["source"]])): s for s in samples.values()}


def expected_rejects(source: str, table: list[tuple]) -> dict[tuple[str, int], str]:
    return {(source, row): str(expect) for row, (*_, expect) in enumerate(table) if isinstance(expect, Reason)}


# --------------------------------------------------------------------------- the bad-input folder

@pytest.fixture(scope="module")
def bad_input(tmp_path_factory) -> Path:
    """`images/` full of good and broken images, `outside.jpg` beside it, and captions.tsv (TSV_ROWS)."""
    root = tmp_path_factory.mktemp("bad_input")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    good = encoded(noise(40, 30, seed=1))
    alpha = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    alpha.paste((*RED, 255), (0, 0, 20, 30))
    palette = Image.new("P", (40, 30), 0)
    palette.putpalette([*BLUE, *GREEN])
    palette.paste(1, (20, 0, 40, 30))
    ramp = np.tile(np.linspace(0, 65535, 40).round().astype(np.uint16), (30, 1))
    files = {
        "good.jpg": good,
        "copy_of_good.jpg": good,
        "big.png": encoded(noise(128, 96, seed=2), "PNG"),
        "alpha.png": encoded(alpha, "PNG"),
        "palette.png": encoded(palette, "PNG"),
        "deep16.png": encoded(Image.fromarray(ramp), "PNG"),
        "cmyk.jpg": encoded(Image.new("CMYK", (40, 30), (0, 255, 0, 0))),
        "12:30.jpg": encoded(noise(40, 30, seed=3)),
        "sub/nested.jpg": encoded(noise(30, 40, seed=4)),
        "lonely.jpg": encoded(noise(40, 30, seed=5)),
        "truncated.jpg": (lambda data: data[:len(data) // 2])(encoded(noise(40, 30, seed=6))),
        "empty.jpg": b"",
        "bomb.png": encoded(Image.new("1", (10_000, 10_000)), "PNG"),  # 100M pixels in ~12 kB
        "tiny.png": encoded(Image.new("RGB", (1, 1), RED), "PNG"),
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    (root / "outside.jpg").write_bytes(encoded(noise(40, 30, seed=7)))
    (images / "link.jpg").symlink_to("../outside.jpg")
    (images / "loop.jpg").symlink_to("loop.jpg")
    assert Image.open(images / "deep16.png").mode.startswith("I;16")
    assert Image.open(images / "cmyk.jpg").mode == "CMYK" and Image.open(images / "palette.png").mode == "P"

    lines = [b"image\tcaption"]
    for image, caption, _ in TSV_ROWS:
        fields = [image, caption] if caption is not None else [image]
        lines.append(b"\t".join(f if isinstance(f, bytes) else f.encode() for f in fields))
    (root / "captions.tsv").write_bytes(b"\n".join(lines) + b"\n")
    return root


@dataclass
class Run:
    out: Path
    manifest: dict
    before: dict
    after: dict


@pytest.fixture(scope="module")
def tsv_run(bad_input, tmp_path_factory) -> Run:
    """captions.tsv prepared by the step function, with two worker processes, from a scratch working folder."""
    work = tmp_path_factory.mktemp("tsv_run")
    (work / "cwd").mkdir()
    before = tree(bad_input, work)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work / "cwd")
        manifest = step.prepare_captions(step.CaptionsOptions(
            out=str(work / "out"), captions=str(bad_input / "captions.tsv"), images=str(bad_input / "images"),
            workers=2, image_size=IMAGE_SIZE))
    return Run(work / "out", manifest, before, tree(bad_input, work))


# --------------------------------------------------------------------------- captions.tsv

def test_every_bad_row_is_rejected_with_its_reason_and_every_good_row_written(tsv_run):
    samples = assert_accounted(tsv_run.out, tsv_run.manifest, len(TSV_ROWS),
                               expected_rejects("captions.tsv", TSV_ROWS))
    assert {names: s["meta"]["captions"] for names, s in by_names(samples).items()} == TSV_SAMPLES


def test_nothing_is_written_outside_out(tsv_run):
    assert_written_only_under(tsv_run.out, tsv_run.before, tsv_run.after)


def test_the_same_image_under_two_names_is_one_sample(tsv_run):
    sample = by_names(read_samples(tsv_run.out, tsv_run.manifest))[("good.jpg", "copy_of_good.jpg")]
    assert sample["meta"]["source"] == "good.jpg"
    assert sample["text"] == "a red bus"
    assert sample["meta"]["captions"] == ["a red bus", "the same bus under another name"]


def test_an_image_whose_rows_were_all_rejected_has_no_sample(tsv_run):
    names = {name for names in by_names(read_samples(tsv_run.out, tsv_run.manifest)) for name in names}
    assert names == {name for names in TSV_SAMPLES for name in names}
    assert "lonely.jpg" not in names  # a good image, but none of its three captions is usable


def test_reject_details_say_what_to_fix(tsv_run):
    lines = [json.loads(line) for line in (tsv_run.out / "rejects.jsonl").read_text().splitlines()]
    detail = {TSV_ROWS[line["row"]][0]: line["detail"] for line in lines if line["reason"] != "duplicate"}
    assert "10000x10000" in detail["bomb.png"] and "--max-pixels" in detail["bomb.png"]
    assert "1x1" in detail["tiny.png"] and "--min-size" in detail["tiny.png"]
    assert "missing.jpg" in detail["missing.jpg"] and "symlink" in detail["link.jpg"]


def test_odd_images_become_rgb_without_being_upscaled(tsv_run):
    samples = by_names(read_samples(tsv_run.out, tsv_run.manifest))
    size = {names[0]: s["image"].size for names, s in samples.items()}
    assert size["good.jpg"] == (40, 30) and size["sub/nested.jpg"] == (30, 40)  # below --image-size: kept
    assert size["big.png"] == (85, 64)  # the shorter side brought down to --image-size, aspect kept

    alpha = samples[("alpha.png",)]["image"]
    assert close(alpha.getpixel((5, 15)), RED) and close(alpha.getpixel((35, 15)), WHITE)  # over white
    palette = samples[("palette.png",)]["image"]
    assert close(palette.getpixel((5, 15)), BLUE) and close(palette.getpixel((35, 15)), GREEN)
    assert close(samples[("cmyk.jpg",)]["image"].getpixel((20, 15)), MAGENTA)
    ramp = [samples[("deep16.png",)]["image"].getpixel((x, 15))[0] for x in (0, 20, 39)]
    assert ramp[0] <= 8 and abs(ramp[1] - 255 * 20 / 39) <= 8 and ramp[2] >= 247  # scaled, not clipped


def test_open_clip_reads_the_shards_with_webdataset(tsv_run):
    urls = [str(tsv_run.out / entry["name"]) for split in tsv_run.manifest["splits"].values()
            for entry in split["shards"]]
    dataset = webdataset.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg;png", "txt")
    read = {key: (image.mode, min(image.size) <= IMAGE_SIZE, text) for key, image, text in dataset}
    samples = read_samples(tsv_run.out, tsv_run.manifest)
    assert read == {key: ("RGB", True, s["text"]) for key, s in samples.items()}


def test_the_cli_gives_the_same_output(tsv_run, bad_input, tmp_path):
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    before = tree(bad_input, tmp_path)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubeclip"), "prepare", "captions", "--out", str(out),
         "--captions", str(bad_input / "captions.tsv"), "--images", str(bad_input / "images"),
         "--image-size", str(IMAGE_SIZE), "--workers", "1"],
        cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert {k: summary[k] for k in ("rows_in", "rows_written", "rows_rejected")} == \
           {k: tsv_run.manifest[k] for k in ("rows_in", "rows_written", "rows_rejected")}
    assert summary["rows_in"] == summary["rows_written"] + sum(summary["rows_rejected"].values())
    assert_written_only_under(out, before, tree(bad_input, tmp_path))
    manifest = json.loads((out / "manifest.json").read_text())
    assert_accounted(out, manifest, len(TSV_ROWS), expected_rejects("captions.tsv", TSV_ROWS))
    # One worker or two, flags or function: the same shards and the same rejects.
    for name in [e["name"] for s in manifest["splits"].values() for e in s["shards"]] + ["rejects.jsonl"]:
        assert (out / name).read_bytes() == (tsv_run.out / name).read_bytes(), name


# --------------------------------------------------------------------------- other caption formats

def prepare_captions(bad_input: Path, tmp_path: Path, name: str, data: bytes) -> tuple[Path, dict]:
    (tmp_path / name).write_bytes(data)
    out = tmp_path / "out"
    manifest = step.prepare_captions(step.CaptionsOptions(
        out=str(out), captions=str(tmp_path / name), images=str(bad_input / "images"), workers=1,
        image_size=IMAGE_SIZE))
    return out, manifest


def test_csv_with_quoted_commas_and_broken_rows(bad_input, tmp_path):
    out, manifest = prepare_captions(bad_input, tmp_path, "captions.csv", (
        'image,caption\n'
        'good.jpg,"a red bus, parked"\n'
        'sub/nested.jpg,"a caption\nover two lines"\n'
        'cmyk.jpg,one field,too many\n'
        'big.png\n').encode())
    samples = assert_accounted(out, manifest, 4, {("captions.csv", 2): "malformed_row",
                                                  ("captions.csv", 3): "malformed_row"})
    assert {names: s["meta"]["captions"] for names, s in by_names(samples).items()} == {
        ("good.jpg",): ["a red bus, parked"], ("sub/nested.jpg",): ["a caption over two lines"]}


def test_jsonl_with_malformed_lines(bad_input, tmp_path):
    lines = [
        b'{"image": "good.jpg", "caption": "a red bus"}',
        b'{"image": "cmyk.jpg", "caption": "tab\\there \\u0000 &lt;b&gt;"}',  # JSON-escaped control characters
        b'{"image": "good.jpg", "caption": ',
        b'',  # a blank line is no record
        b'["good.jpg", "a list, not an object"]',
        b'{"image": "good.jpg", "caption": 7}',
        b'{"image": "good.jpg", "caption": "caf\xe9"}',
        b'{"image": "big.png", "caption": "a lone \\ud800 surrogate"}',
        b'{"image": "big.png", "caption": "a wide picture"}',
        b'{"image": "good.jpg\\u0000.png", "caption": "a NUL byte in the name"}',
    ]
    out, manifest = prepare_captions(bad_input, tmp_path, "captions.jsonl", b"\n".join(lines) + b"\n")
    reasons = {2: "malformed_row", 3: "malformed_row", 4: "malformed_row", 5: "invalid_utf8", 6: "invalid_utf8",
               8: "unsafe_path"}
    samples = assert_accounted(out, manifest, 9, {("captions.jsonl", row): r for row, r in reasons.items()})
    assert {names: s["meta"]["captions"] for names, s in by_names(samples).items()} == {
        ("good.jpg",): ["a red bus"], ("cmyk.jpg",): ["tab here <b>"], ("big.png",): ["a wide picture"]}


def test_coco_with_unknown_image_ids(bad_input, tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "good.jpg"}, {"id": 2, "file_name": "cmyk.jpg"},
                   {"id": 3, "file_name": "tiny.png"}],
        "annotations": [
            {"image_id": 1, "caption": "a red bus"},
            {"image_id": 1, "caption": "a bus &amp; its driver"},
            {"image_id": 2, "caption": "a magenta square"},
            {"image_id": 99, "caption": "an image the file does not list"},
            {"image_id": 1},
            {"image_id": 3, "caption": "a single pixel"},
            {"image_id": [1], "caption": "an id that is a list"},
        ]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    manifest = step.prepare_coco(step.CocoOptions(out=str(out), annotations=str(tmp_path / "captions.json"),
                                                  images=str(bad_input / "images"), workers=1, image_size=IMAGE_SIZE))
    reasons = {3: "malformed_row", 4: "malformed_row", 5: "too_small", 6: "malformed_row"}
    samples = assert_accounted(out, manifest, 7, {("captions.json", row): r for row, r in reasons.items()})
    assert {names: s["meta"]["captions"] for names, s in by_names(samples).items()} == {
        ("good.jpg",): ["a red bus", "a bus & its driver"], ("cmyk.jpg",): ["a magenta square"]}


# --------------------------------------------------------------------------- classification

def test_classification_rejects_labels_outside_the_classes(bad_input, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(bad_input / "images", root, symlinks=True)
    (root / "classes.txt").write_text("bus\nsquare\n")
    (root / "labels.csv").write_text(
        "path,label,class_name\n"
        "good.jpg,0,bus\n"
        "cmyk.jpg,1,square\n"
        "big.png,5,unknown\n"
        "palette.png,-1,unknown\n"
        "alpha.png,\u00b2,unknown\n"  # a superscript two: a digit to str.isdigit, not a number to int()
        "deep16.png,bus,bus\n"
        "copy_of_good.jpg,0,bus\n"
        "good.jpg,1,square\n"
        "empty.jpg,0,bus\n"
        "missing.jpg,1,square\n", encoding="utf-8")
    out = tmp_path / "out"
    manifest = step.prepare_classification(step.ClassificationOptions(out=str(out), root=str(root), workers=1,
                                                                      image_size=IMAGE_SIZE))
    reasons = {2: "bad_label", 3: "bad_label", 4: "bad_label", 5: "bad_label", 6: "duplicate",
               7: "conflicting_label", 8: "unreadable_image", 9: "missing_image"}
    samples = assert_accounted(out, manifest, 10, {("labels.csv", row): r for row, r in reasons.items()})
    labels = {s["meta"]["source"]: (s["label"], s["meta"]["class_name"]) for s in samples.values()}
    assert labels == {"good.jpg": (0, "bus"), "cmyk.jpg": (1, "square")}
    assert manifest["classes"] == ["bus", "square"]


# --------------------------------------------------------------------------- webdataset tars

def test_webdataset_member_leaving_the_archive_is_rejected_and_never_written(tmp_path, monkeypatch):
    red, green, blue = (encoded(Image.new("RGB", (40, 30), colour)) for colour in (RED, GREEN, BLUE))
    first = write_tar(tmp_path / "input" / "a" / "shard-0.tar", [
        ("000.jpg", red), ("000.txt", b"a cat &amp; a dog"),
        ("001.png", encoded(noise(40, 30, seed=11), "PNG")),
        ("001.json", json.dumps({"captions": ["first caption", "second caption"]}).encode()),
        ("../evil.jpg", encoded(noise(40, 30, seed=12))), ("../evil.txt", b"I escape"),
        ("/abs.jpg", encoded(noise(40, 30, seed=13))), ("/abs.txt", b"an absolute member"),
        ("002.jpg", encoded(noise(40, 30, seed=14))),  # no caption
        ("003.jpg", encoded(noise(40, 30, seed=15))[:200]), ("003.txt", b"a truncated image"),
        ("004.jpg", encoded(noise(40, 30, seed=16))), ("004.txt", b"caf\xe9"),
    ])
    # The same tar name in another folder, with the same keys: its samples stay its own.
    write_tar(tmp_path / "input" / "b" / "shard-0.tar", [("000.jpg", blue), ("000.txt", b"a blue picture")])
    write_tar(tmp_path / "input" / "c" / "shard-1.tar.gz", [("000.jpg", green), ("000.txt", b"a gzipped picture")],
              mode="w:gz")
    out = tmp_path / "work" / "out"
    monkeypatch.chdir(first.parent)  # a member extracted relative to the working folder would land in input/
    before = tree(tmp_path)
    manifest = step.prepare_webdataset(step.WebDatasetOptions(
        out=str(out), shards=[str(tmp_path / "input" / "*" / "*.tar"), str(tmp_path / "input" / "*" / "*.tar.gz")],
        workers=1, image_size=IMAGE_SIZE))

    reasons = {3: "unsafe_path", 4: "unsafe_path", 5: "malformed_row", 6: "unreadable_image", 7: "invalid_utf8"}
    samples = assert_accounted(out, manifest, 10, {("shard-0.tar", row): r for row, r in reasons.items()})
    colour = {tuple(s["meta"]["captions"]): s["image"].getpixel((20, 15)) for s in samples.values()}
    assert set(colour) == {("a cat & a dog",), ("first caption", "second caption"), ("a blue picture",),
                           ("a gzipped picture",)}
    assert close(colour[("a cat & a dog",)], RED) and close(colour[("a blue picture",)], BLUE)
    assert close(colour[("a gzipped picture",)], GREEN)

    assert_written_only_under(out, before, tree(tmp_path))
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(("evil", "abs"))]
    assert not Path("/abs.jpg").exists()
