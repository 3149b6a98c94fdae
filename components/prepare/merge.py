"""`prepare merge`: the outputs of N `--partition I/N` runs combined into one, renumbered, under one manifest."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass

from kubeclip.components.lineage import write_lineage
from kubeclip.components.options import option
from kubeclip.components.prepare.shards import MANIFEST, REJECTS, Output, sha256


@dataclass(kw_only=True)
class MergeOptions:
    out: str = option(help="output folder or fsspec URL for the merged dataset")
    parts: list[str] = option(help="the partitions' --out folders", positional=True)


def merge(opts: MergeOptions) -> dict:
    started = time.time()
    out = Output(opts.out)
    parts = [(Output(p), _complete_manifest(p)) for p in opts.parts]
    _check_partitions([m for _, m in parts])
    first = parts[0][1]
    manifest = {"kind": first["kind"], "partition": "0/1", "complete": False, "splits": {}}
    if "classes" in first:
        manifest["classes"] = first["classes"]
    splits = list(dict.fromkeys(name for _, m in parts for name in m["splits"]))
    for split in splits:
        entries = []
        for part, m in parts:
            for entry in m["splits"].get(split, {}).get("shards", []):
                data = part.read(entry["name"])
                if data is None or sha256(data) != entry["sha256"]:
                    raise SystemExit(f"{part.url}/{entry['name']} is missing or does not match its manifest sha256")
                name = f"{split}/shard-{len(entries):06d}.tar"
                out.write(name, data)
                entries.append({**entry, "name": name, "from": f"{part.url}/{entry['name']}"})
        manifest["splits"][split] = {"samples": sum(e["samples"] for e in entries), "shards": entries}
    for part, _ in parts:  # the synthetic evaluation sets, written by one partition
        for path in part.fs.find(part.path("eval")) if part.fs.isdir(part.path("eval")) else []:
            out.write(path[len(part.root) + 1:], part.fs.cat_file(path))

    rejects = sorted((r for part, _ in parts for r in part.read_jsonl(REJECTS)), key=lambda r: (r["source"], r["row"]))
    manifest.update(rows_in=sum(m["rows_in"] for _, m in parts), rows_written=sum(m["rows_written"] for _, m in parts),
                    rows_rejected=dict(sorted(Counter(r["reason"] for r in rejects).items())), complete=True)
    out.write_jsonl(REJECTS, rejects)
    out.write_json(MANIFEST, manifest)
    write_lineage(opts.out, "prepare merge", {p: {"url": p, "manifest_sha256": sha256(Output(p).read(MANIFEST))}
                                              for p in opts.parts}, asdict(opts), started)
    return manifest


def _complete_manifest(url: str) -> dict:
    manifest = Output(url).read_json(MANIFEST)
    if not manifest or not manifest.get("complete"):
        raise SystemExit(f"{url} holds no finished prepare run (its manifest.json is missing or incomplete); "
                         "rerun that partition first")
    return manifest


def _check_partitions(manifests: list[dict]) -> None:
    """All N partitions of one dataset, each once: otherwise the accounting would not cover the whole."""
    found = [tuple(map(int, m["partition"].split("/"))) for m in manifests]
    count = found[0][1]
    if sorted(found) != [(i, count) for i in range(count)]:
        raise SystemExit(f"merge needs each of the {count} partitions exactly once, got "
                         f"{sorted(f'{i}/{n}' for i, n in found)}")
    if len({m["kind"] for m in manifests}) > 1 or len({tuple(m.get("classes", ())) for m in manifests}) > 1:
        raise SystemExit("the partitions hold different kinds of data or different class lists")
