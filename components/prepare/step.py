"""The prepare step: rows in, clean WebDataset shards out, every row accounted for.

1. Read all rows (text only); fingerprint every distinct image by content, in worker processes.
2. Keep this partition's images; clean captions; group rows by image content; reject repeats; split.
3. Plan shards: each split's samples sorted by key, cut every `shard_size`. The plan depends only on
   the input, so a rerun skips shards already committed and the output is the same as one clean run.
4. Decode, validate, resize and re-encode in workers, which also lay the samples out as tar members; join
   each shard's members, write the shard and its reject ledger, then commit it in the manifest.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
from tqdm import tqdm

from kubeclip.components.lineage import file_sha256, write_lineage
from kubeclip.components.options import option
from kubeclip.components.prepare import sources
from kubeclip.components.prepare.images import Encoded, ImageLimits, Rejected, process
from kubeclip.components.prepare.shards import MANIFEST, REJECTS, Output, sha256, tar_archive, tar_members
from kubeclip.components.prepare.sources import Reject, Row


@dataclass(kw_only=True)
class PrepareOptions:
    out: str = option(help="output folder or fsspec URL (s3://..., gs://...)")
    image_size: int = option(224, "shorter image side after resizing; images are never upscaled")
    min_size: int = option(8, "reject images whose shorter side is below this many pixels")
    max_pixels: int = option(40_000_000, "reject images with more pixels than this (decompression bombs)")
    max_caption_chars: int = option(1000, "reject captions longer than this after cleaning")
    shard_size: int = option(1000, "samples per tar shard")
    workers: int = option(0, "worker processes for hashing and image work; 0 means one per CPU core")
    seed: int = option(0, "salts the split assignment (and draws the synthetic data)")
    partition: str = option("0/1", "I/N: process only images whose content hashes to partition I of N; "
                                   "combine the N outputs with `kubeclip prepare merge`")
    image_format: str = option("jpg", "re-encode images as jpg, png or webp")

    def limits(self) -> ImageLimits:
        return ImageLimits(self.image_size, self.min_size, self.max_pixels, self.image_format)


@dataclass
class Sample:
    key: str
    identity: str
    names: list[str]  # every image name with this content, in order of first appearance
    rows: list[Row] = field(default_factory=list)
    split: str = ""

    def entry(self) -> Entry:
        """What a worker needs to write this sample, in builtin types: they cross to the worker fastest."""
        return self.key, self.names, self.rows[0].label if self.rows[0].caption is None else \
            [r.caption for r in self.rows]


Entry = tuple[str, list[str], list[str] | int]  # key, image names, captions or label


# --------------------------------------------------------------------------- worker side

_worker_store: Any = None
_worker_limits: ImageLimits | None = None


def _init_worker(store: Any, limits: ImageLimits, parent: int | None = None) -> None:
    global _worker_store, _worker_limits
    _worker_store, _worker_limits = store, limits
    if parent is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the run stops the workers
        _die_with(parent)


def _die_with(parent: int) -> None:
    """Have Linux kill this worker when the run that forked it dies, even by SIGKILL: an orphaned worker
    would wait for work forever, holding its memory."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the run died before the request took effect
        os._exit(1)


def _fingerprint(name: str) -> str | Rejected:
    try:
        return _worker_store.fingerprint(name)
    except Rejected as e:
        return e


def _encode_run(task: tuple[list[Entry], list[str] | None]) -> tuple[bytes, list[Rejected | None]]:
    """A run of one shard's samples as tar members, and per sample its rejection or None. Building the
    members here rather than in the main process keeps the main process from becoming the bottleneck."""
    entries, classes = task
    files, outcomes = [], []
    for entry in entries:
        _, names, _ = entry
        try:
            files += sample_files(entry, process(_worker_store.read(names[0]), _worker_limits), classes)
            outcomes.append(None)
        except Rejected as e:
            outcomes.append(e)
    return tar_members(files), outcomes


def _apply(fn: Callable, items: list, spill: str) -> str:
    """`fn` over `items`, the results pickled to a file in `spill`; returns its path. A result sent through
    the pool's pipe would have to be small: a worker killed while sending a bigger one (tar members are
    hundreds of KB) leaves the pool waiting for the rest forever instead of failing with BrokenProcessPool."""
    with tempfile.NamedTemporaryFile(dir=spill, delete=False) as file:
        pickle.dump([fn(item) for item in items], file, protocol=pickle.HIGHEST_PROTOCOL)
    return file.name


def _take(path: str) -> list:
    with open(path, "rb") as file:
        results = pickle.load(file)
    os.unlink(path)
    return results


class Workers:
    """An ordered map over worker processes, or in this process when there is one worker.

    concurrent.futures rather than multiprocessing.Pool: a worker that dies (out of memory, killed) fails the
    run with BrokenProcessPool instead of hanging it, and its result thread does not spin while results
    wait in the pipe (Pool's worker handler polls that pipe too, costing ~10% of a core here)."""

    def __init__(self, count: int, store: Any, limits: ImageLimits):
        self.count = count or os.cpu_count() or 1
        self.pool, self.spill = None, ""
        if self.count > 1:
            self.spill = tempfile.mkdtemp(prefix="kubeclip-prepare-")
            # fork starts workers at once, with the modules already imported; spawn where fork is unsafe
            linux = sys.platform == "linux"
            self.pool = ProcessPoolExecutor(self.count, multiprocessing.get_context("fork" if linux else "spawn"),
                                            initializer=_init_worker,
                                            initargs=(store, limits, os.getpid() if linux else None))
        else:
            _init_worker(store, limits)

    def batch(self, items: int, most: int) -> int:
        """Items per task: enough to amortise the cost of a task (~1 ms), few enough to keep every worker
        busy to the end. `most` bounds the work of one task."""
        return max(1, min(most, items // (self.count * 8)))

    def map(self, fn: Callable, items: list, batch: int) -> Iterator:
        """`fn` over `items` in order. The first tasks start at once, so the caller can work meanwhile; at
        most four tasks per worker are in flight, so memory stays bounded."""
        if self.pool is None:
            return map(fn, items)
        tasks = (items[start:start + batch] for start in range(0, len(items), batch))
        pending = deque(self.pool.submit(_apply, fn, task, self.spill)
                        for task in itertools.islice(tasks, 4 * self.count))
        return self._drain(fn, tasks, pending)

    def _drain(self, fn: Callable, tasks: Iterator[list], pending: deque[Future]) -> Iterator:
        while pending:
            yield from _take(pending.popleft().result())
            task = next(tasks, None)
            if task is not None:
                pending.append(self.pool.submit(_apply, fn, task, self.spill))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            shutil.rmtree(self.spill, ignore_errors=True)


# --------------------------------------------------------------------------- planning

def parse_partition(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise SystemExit(f"--partition takes I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


def fraction(identity: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the image's content: splits never depend on input order."""
    return int(hashlib.sha256(f"{seed}:{identity}".encode()).hexdigest()[:12], 16) / 16 ** 12


def _partition_of(identity: str, count: int) -> int:
    return int(identity[-12:], 16) % count


def _reject(row: Row | Reject, reason: str, detail: str) -> dict:
    return {"row": row.row, "source": row.source, "reason": reason, "detail": detail}


def clean(row: Row | Reject, max_caption_chars: int) -> Row | Reject:
    """The row with its caption cleaned, or a Reject that says why the caption cannot be used."""
    if isinstance(row, Reject) or row.caption is None:
        return row
    try:
        caption = sources.clean_caption(row.caption, max_caption_chars)
    except Rejected as e:
        return Reject(row.row, row.source, e.reason, e.detail)
    return row if caption == row.caption else row._replace(caption=caption)


def plan_samples(rows: list[Row | Reject], identities: dict[str, str | Rejected], opts: PrepareOptions,
                 choose_split: Callable[[Sample], str | None]) -> tuple[list[Sample], list[dict], int]:
    """This partition's samples, its row-level rejects and its number of input rows."""
    index, count = parse_partition(opts.partition)
    samples: dict[str, Sample] = {}
    rejects: list[dict] = []
    rows_in = 0
    for row in rows:
        found = row if isinstance(row, Reject) else identities[row.image]
        if isinstance(found, str):
            identity = found
        else:  # a row that never reaches a sample still belongs to exactly one partition
            key = f"{row.source}#{row.row}" if found is row else row.image
            identity = hashlib.sha256(key.encode()).hexdigest()
        if count > 1 and _partition_of(identity, count) != index:
            continue
        rows_in += 1
        if not isinstance(found, str):
            rejects.append(_reject(row, found.reason, found.detail))
            continue
        sample = samples.get(identity)
        if sample is None:
            sample = samples[identity] = Sample(identity[:16], identity, [])
        if row.image not in sample.names:
            sample.names.append(row.image)
        duplicate = _duplicate_of(sample, row)
        if duplicate:
            rejects.append(_reject(row, *duplicate))
        else:
            sample.rows.append(row)

    planned = []
    for sample in samples.values():
        split = choose_split(sample)
        if split is None:
            rejects += [_reject(r, "no_split", f"image {sample.names[0]!r} is in none of the --split-files")
                        for r in sample.rows]
        else:
            sample.split = split
            planned.append(sample)
    return planned, rejects, rows_in


def _duplicate_of(sample: Sample, row: Row) -> tuple[str, str] | None:
    for kept in sample.rows:
        if row.caption is not None and kept.caption == row.caption:
            return "duplicate", f"the same caption for the same image as row {kept.row} of {kept.source}"
        if row.label is not None:
            if kept.label == row.label:
                return "duplicate", f"the same image and label as row {kept.row} of {kept.source}"
            return "conflicting_label", f"the same image has label {kept.label} in row {kept.row} of {kept.source}"
    return None


def plan_shards(samples: list[Sample], splits: Iterable[str], shard_size: int) -> dict[str, list[list[Sample]]]:
    by_split: dict[str, list[Sample]] = {name: [] for name in splits}
    for sample in sorted(samples, key=lambda s: s.key):
        by_split.setdefault(sample.split, []).append(sample)
    return {name: [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
            for name, items in by_split.items()}


def shard_plan_id(shard: list[Sample], opts: PrepareOptions) -> str:
    """What a shard's bytes depend on; a committed shard with another plan id is stale."""
    content = [opts.image_size, opts.min_size, opts.max_pixels, opts.image_format,
               [(s.key, s.names, [r.caption if r.label is None else r.label for r in s.rows]) for s in shard]]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


# --------------------------------------------------------------------------- writing

def sample_files(entry: Entry, encoded: Encoded, classes: list[str] | None) -> list[tuple[str, bytes]]:
    key, names, captions_or_label = entry
    meta: dict[str, Any] = {"id": key, "source": names[0], "width": encoded.width, "height": encoded.height}
    files = []
    if isinstance(captions_or_label, list):
        meta["captions"] = captions_or_label
        files.append((f"{key}.txt", captions_or_label[0].encode()))
    else:
        meta.update(label=captions_or_label, class_name=classes[captions_or_label])
        files.append((f"{key}.cls", str(captions_or_label).encode()))
    if len(names) > 1:
        meta["names"] = names
    files.append((f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()))
    image = (f"{key}.{_suffix(encoded)}", encoded.data)
    return [image, *sorted(files)]


def _suffix(encoded: Encoded) -> str:
    head = encoded.data[:12]
    return "png" if head.startswith(b"\x89PNG") else "webp" if head[8:12] == b"WEBP" else "jpg"


def run(rows: Iterable[Row | Reject], store: Any, opts: PrepareOptions, *, kind: str, splits: list[str],
        choose_split: Callable[[Sample], str | None], classes: list[str] | None = None,
        inputs: dict[str, Any] | None = None, step: str = "prepare") -> dict:
    """Prepare `rows` into `opts.out`; returns the manifest."""
    started = time.time()
    out = Output(opts.out)
    rows = list(rows)  # first: reading rows fills the webdataset store's member table, which workers need
    workers = Workers(opts.workers, store, opts.limits())
    try:
        names = list(dict.fromkeys(r.image for r in rows if isinstance(r, Row)))
        fingerprints = workers.map(_fingerprint, names, workers.batch(len(names), most=1024))
        rows = [clean(row, opts.max_caption_chars) for row in rows]  # while the workers fingerprint
        identities = dict(zip(names, tqdm(fingerprints, total=len(names), unit="img", desc="fingerprinting",
                                          mininterval=1, disable=None)))
        samples, rejects, rows_in = plan_samples(rows, identities, opts, choose_split)
        shards = plan_shards(samples, splits, opts.shard_size)
        manifest = _write_shards(out, shards, workers, opts, kind, classes)
    except BrokenProcessPool as e:
        raise SystemExit("a prepare worker process died: it was killed, perhaps for lack of memory (try fewer "
                         "--workers). Rerun the same command to go on: committed shards are kept.") from e
    finally:
        workers.close()

    for split in manifest["splits"].values():
        for entry in split["shards"]:
            rejects += out.read_jsonl(_ledger_name(entry["name"]))
    rejects.sort(key=lambda r: (r["source"], r["row"]))
    manifest.update(rows_in=rows_in, rows_written=sum(e["rows"] for s in manifest["splits"].values() for e in s["shards"]),
                    rows_rejected=dict(sorted(Counter(r["reason"] for r in rejects).items())), complete=True)
    if manifest["rows_in"] != manifest["rows_written"] + len(rejects):
        raise RuntimeError(f"accounting error: {rows_in} rows in, {manifest['rows_written']} written, "
                           f"{len(rejects)} rejected")
    if classes is not None:
        out.write("classes.txt", "".join(f"{name}\n" for name in classes).encode())
    out.write_jsonl(REJECTS, rejects)
    out.write_json(MANIFEST, manifest)
    write_lineage(opts.out, step, inputs or {}, asdict(opts), started)
    return manifest


def _ledger_name(shard_name: str) -> str:
    return "ledger/" + shard_name.replace("/", "-").removesuffix(".tar") + ".jsonl"


def _write_shards(out: Output, shards: dict[str, list[list[Sample]]], workers: Workers, opts: PrepareOptions,
                  kind: str, classes: list[str] | None) -> dict:
    previous = out.read_json(MANIFEST) or {}
    committed = {e["name"]: e for s in previous.get("splits", {}).values() for e in s["shards"]}
    manifest = {"kind": kind, "partition": opts.partition, "complete": False, "rows_in": None,
                "rows_written": None, "rows_rejected": None,
                "splits": {name: {"samples": 0, "shards": []} for name in shards}}
    if classes is not None:
        manifest["classes"] = classes
    pending = []
    for split, split_shards in shards.items():
        for number, shard in enumerate(split_shards):
            name, plan = f"{split}/shard-{number:06d}.tar", shard_plan_id(shard, opts)
            if committed.get(name, {}).get("plan") == plan:
                _add_entry(manifest, split, committed[name])
            else:
                pending.append((split, name, plan, shard))

    size = workers.batch(sum(len(shard) for *_, shard in pending), most=32)  # ~30 ms of image work
    runs = [shard[i:i + size] for *_, shard in pending for i in range(0, len(shard), size)]
    results = workers.map(_encode_run, [([s.entry() for s in part], classes) for part in runs], batch=1)
    progress = tqdm(total=sum(map(len, runs)), unit="img", desc="writing shards", mininterval=1, disable=None)
    for split, name, plan, shard in pending:
        members, ledger, rows, samples = [], [], 0, 0
        for start in range(0, len(shard), size):
            data, outcomes = next(results)
            members.append(data)
            for sample, rejected in zip(shard[start:start + size], outcomes):
                if rejected is None:
                    rows, samples = rows + len(sample.rows), samples + 1
                else:
                    detail = f"{sample.names[0]}: {rejected.detail}"
                    ledger += [_reject(r, rejected.reason, detail) for r in sample.rows]
            progress.update(len(outcomes))
        data = tar_archive(members)
        out.write(name, data)
        out.write_jsonl(_ledger_name(name), ledger)
        _add_entry(manifest, split, {"name": name, "samples": samples, "rows": rows, "sha256": sha256(data),
                                     "plan": plan})
        out.write_json(MANIFEST, manifest)  # the commit
    progress.close()
    return manifest


def _add_entry(manifest: dict, split: str, entry: dict) -> None:
    manifest["splits"][split]["shards"].append(entry)
    manifest["splits"][split]["shards"].sort(key=lambda e: e["name"])
    manifest["splits"][split]["samples"] += entry["samples"]


# --------------------------------------------------------------------------- sources

@dataclass(kw_only=True)
class SplitOptions(PrepareOptions):
    val_fraction: float = option(0.05, "share of images (by content hash) put in the 'val' split")

    def by_fraction(self) -> Callable[[Sample], str]:
        return lambda sample: "val" if fraction(sample.identity, self.seed) < self.val_fraction else "train"


@dataclass(kw_only=True)
class SyntheticOptions(SplitOptions):
    samples: int = option(10_000, "number of synthetic scenes (each with 4 captions)")
    eval_samples_per_class: int = option(50, "images per class in each evaluation set under eval/")
    probe_fraction: float = option(0.5, "share of each evaluation set kept in probe/ for linear probes")
    image_format: str = option("png", "re-encode images as jpg, png or webp (png keeps the drawings crisp)")


@dataclass(kw_only=True)
class CaptionsOptions(SplitOptions):
    captions: str = option(help="TSV/CSV with a header row, or JSON lines, of image-caption rows")
    images: str = option(help="folder or URL that image paths are relative to")
    image_column: str = option("image", "column (or JSON key) holding the image path")
    caption_column: str = option("caption", "column (or JSON key) holding the caption")
    split_files: list[str] = option([], "NAME=FILE ...: official splits, one image name per line; rows of "
                                        "images in no file are rejected as no_split (replaces --val-fraction)")


@dataclass(kw_only=True)
class CocoOptions(SplitOptions):
    annotations: str = option(help="COCO captions JSON (images with file_name, annotations with caption)")
    images: str = option(help="folder or URL that file_name is relative to")


@dataclass(kw_only=True)
class WebDatasetOptions(SplitOptions):
    shards: list[str] = option(help="tar files, globs or fsspec URLs of WebDataset shards")


@dataclass(kw_only=True)
class ClassificationOptions(PrepareOptions):
    root: str = option(help="folder with labels.csv (path,label,class_name) and classes.txt")
    probe_fraction: float = option(0.2, "share of each class kept in probe/ for linear probes; 0 keeps none")


def _classification_split(probe_fraction: float, seed: int) -> Callable[[Sample], str]:
    return lambda sample: "probe" if fraction(sample.identity, seed) < probe_fraction else "test"


def prepare_synthetic(opts: SyntheticOptions) -> dict:
    """Draw the synthetic scenes into caption shards, and the held-out evaluation sets into `eval/`."""
    store = sources.SyntheticStore(opts.seed, opts.image_size)
    manifest = run(sources.synthetic_rows(opts.samples, opts.seed, opts.image_size), store, opts,
                   kind="captions", splits=["train", "val"], choose_split=opts.by_fraction(),
                   inputs={"synthetic": {"samples": opts.samples, "seed": opts.seed}}, step="prepare synthetic")
    if parse_partition(opts.partition)[0] == 0:  # one partition writes the evaluation sets
        for name in ("compositions", "counts"):
            classes, rows = sources.synthetic_eval_rows(name, opts.eval_samples_per_class, opts.seed, opts.image_size)
            eval_opts = ClassificationOptions(**{**_common(opts), "out": f"{opts.out.rstrip('/')}/eval/{name}",
                                                 "partition": "0/1", "root": "", "probe_fraction": opts.probe_fraction})
            run(rows, store, eval_opts, kind="classification", splits=["test", "probe"], classes=classes,
                choose_split=_classification_split(opts.probe_fraction, opts.seed), step=f"prepare synthetic {name}")
    return manifest


def prepare_captions(opts: CaptionsOptions) -> dict:
    """Image-caption rows from a TSV/CSV/JSONL file (Flickr8k's layout works as is)."""
    choose, splits = opts.by_fraction(), ["train", "val"]
    if opts.split_files:
        split_of = sources.split_lists(opts.split_files)
        splits = list(dict.fromkeys(split_of.values()))
        choose = lambda sample: next((split_of[n] for n in sample.names if n in split_of), None)  # noqa: E731
    return run(sources.caption_rows(opts.captions, opts.image_column, opts.caption_column),
               sources.FileStore(opts.images), opts, kind="captions", splits=splits, choose_split=choose,
               inputs={"captions": _file_input(opts.captions), "images": {"url": opts.images}},
               step="prepare captions")


def prepare_coco(opts: CocoOptions) -> dict:
    """A COCO-style captions file."""
    return run(sources.coco_rows(opts.annotations), sources.FileStore(opts.images), opts, kind="captions",
               splits=["train", "val"], choose_split=opts.by_fraction(),
               inputs={"annotations": _file_input(opts.annotations), "images": {"url": opts.images}},
               step="prepare coco")


def prepare_webdataset(opts: WebDatasetOptions) -> dict:
    """Existing WebDataset shards (img2dataset's layout), re-validated and re-sharded."""
    urls = sorted(f.full_name for f in fsspec.open_files(opts.shards, "rb"))
    if not urls:
        raise SystemExit(f"--shards {opts.shards} matched no files")
    store, rows = sources.webdataset_rows(urls)
    return run(rows, store, opts, kind="captions", splits=["train", "val"], choose_split=opts.by_fraction(),
               inputs={"shards": opts.shards}, step="prepare webdataset")


def prepare_classification(opts: ClassificationOptions) -> dict:
    """A labelled image set (labels.csv + classes.txt) into test/ and probe/ shards."""
    classes, rows = sources.classification_rows(opts.root.rstrip("/"))
    return run(rows, sources.FileStore(opts.root), opts, kind="classification", splits=["test", "probe"],
               classes=classes, choose_split=_classification_split(opts.probe_fraction, opts.seed),
               inputs={"labels": _file_input(f"{opts.root.rstrip('/')}/labels.csv")}, step="prepare classification")


def _common(opts: PrepareOptions) -> dict:
    return {f: getattr(opts, f) for f in PrepareOptions.__dataclass_fields__}


def _file_input(url: str) -> dict:
    return {"url": url, "sha256": file_sha256(url)}
