"""The prepare step end to end: real data, resume after a kill, determinism, partitions and merge."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from kubeclip.components.prepare import step, synthetic
from kubeclip.components.prepare.merge import MergeOptions, merge
from tests.conftest import takes_ctrl_c


def shard_files(out: Path) -> dict[str, bytes]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {e["name"]: (out / e["name"]).read_bytes() for s in manifest["splits"].values() for e in s["shards"]}


def samples(out: Path) -> dict[str, dict]:
    """key -> the sample's json, with its split, across every shard."""
    manifest = json.loads((out / "manifest.json").read_text())
    found = {}
    for split, info in manifest["splits"].items():
        for entry in info["shards"]:
            with tarfile.open(out / entry["name"]) as tar:
                for member in tar:
                    if member.name.endswith(".json"):
                        found[member.name[:-5]] = {**json.load(tar.extractfile(member)), "split": split}
    return found


def assert_accounting(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert manifest["complete"] is True
    assert manifest["rows_in"] == manifest["rows_written"] + sum(manifest["rows_rejected"].values())
    assert len(rejects) == sum(manifest["rows_rejected"].values())
    return manifest


def test_flickr8k_prepares_with_its_official_splits(flickr8k, tmp_path):
    out = tmp_path / "flickr8k"
    manifest = step.prepare_captions(step.CaptionsOptions(
        out=str(out), captions=str(flickr8k / "captions.tsv"), images=str(flickr8k / "images"), image_size=64,
        workers=2, shard_size=2000, split_files=[f"train={flickr8k}/split_train.txt",
                                                 f"val={flickr8k}/split_dev.txt", f"test={flickr8k}/split_test.txt"]))
    assert_accounting(out)
    assert manifest["rows_in"] == 40455
    assert manifest["rows_rejected"].get("no_split") == 91 * 5  # 91 images are in no official split
    found = samples(out)
    names_per_split = [set(n for s in found.values() if s["split"] == split for n in s.get("names", [s["source"]]))
                       for split in ("train", "val", "test")]
    assert [len(names) for names in names_per_split] == [6000, 1000, 1000]
    assert not (names_per_split[0] & names_per_split[1] or names_per_split[0] & names_per_split[2]
                or names_per_split[1] & names_per_split[2])
    # Flickr8k holds one photo under two names: one sample, both names, all ten captions
    twin = found[next(k for k, s in found.items() if "2851198725_37b6027625.jpg" in s.get("names", []))]
    assert twin["names"] == ["2851198725_37b6027625.jpg", "3050606344_af711c726c.jpg"] and len(twin["captions"]) == 10
    official_test = set((flickr8k / "split_test.txt").read_text().split())
    assert names_per_split[2] == official_test
    assert all(s["width"] == s["height"] == 64 and 1 <= len(s["captions"]) <= 10 for s in found.values())


def run_synthetic(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kubeclip.components.cli", "prepare", "synthetic", "--out", str(out),
                             "--samples", "600", "--shard-size", "50", "--image-size", "48", "--image-format", "jpg",
                             "--eval-samples-per-class", "4", "--workers", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=takes_ctrl_c)


def processes_mentioning(text: str) -> list[int]:
    """Live processes (not zombies) whose command line contains `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            alive = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if alive and text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    return found


@pytest.mark.parametrize("interrupt", ["SIGKILL", "Ctrl-C"])
def test_killed_run_resumes_to_the_same_shards(tmp_path, interrupt):
    whole = tmp_path / "whole"
    assert run_synthetic(whole).wait() == 0

    killed = tmp_path / "killed"
    process = run_synthetic(killed)
    deadline = time.time() + 120
    while time.time() < deadline:
        manifest = killed / "manifest.json"
        if manifest.exists() and len(json.loads(manifest.read_text())["splits"]["train"]["shards"]) >= 2:
            break
        time.sleep(0.05)
    if interrupt == "SIGKILL":
        process.send_signal(signal.SIGKILL)
        process.wait()
    else:  # a terminal sends SIGINT to the whole process group, workers included
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130
        assert stderr.decode().splitlines()[-1] == "kubeclip: interrupted" and b"Traceback" not in stderr
    deadline = time.time() + 10
    while processes_mentioning(str(killed)) and time.time() < deadline:
        time.sleep(0.05)
    assert not processes_mentioning(str(killed)), "the run's worker processes outlived it"
    partial = json.loads((killed / "manifest.json").read_text())
    assert not partial["complete"] and partial["splits"]["train"]["shards"]
    committed = {e["name"]: (killed / e["name"]).stat().st_mtime_ns for e in partial["splits"]["train"]["shards"]}

    assert run_synthetic(killed).wait() == 0
    assert {name: (killed / name).stat().st_mtime_ns for name in committed} == committed  # skipped, not redone
    assert shard_files(killed) == shard_files(whole)
    for name in ("manifest.json", "rejects.jsonl"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes()


def test_a_killed_worker_stops_the_run_with_a_clear_error_and_a_rerun_completes(tmp_path):
    opts = step.SyntheticOptions(out=str(tmp_path / "out"), samples=600, shard_size=50, image_size=48,
                                 image_format="jpg", eval_samples_per_class=4, workers=2)
    outcome = {}

    def prepare():
        try:
            step.prepare_synthetic(opts)
        except SystemExit as e:
            outcome["error"] = str(e)

    runner = threading.Thread(target=prepare, daemon=True)  # a hung run fails this test, not the whole suite
    runner.start()
    manifest = tmp_path / "out" / "manifest.json"
    deadline = time.time() + 120
    while not (manifest.exists() and json.loads(manifest.read_text())["splits"]["train"]["shards"]):
        assert time.time() < deadline and runner.is_alive(), "no shard was committed"
        time.sleep(0.02)
    os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
    runner.join(60)
    assert "worker process died" in outcome["error"] and "Rerun the same command" in outcome["error"]
    committed = json.loads(manifest.read_text())["splits"]["train"]["shards"]

    step.prepare_synthetic(opts)
    assert_accounting(tmp_path / "out")["rows_written"] == 2400
    assert {e["name"]: e["sha256"] for e in committed}.items() <= \
        {e["name"]: e["sha256"] for e in json.loads(manifest.read_text())["splits"]["train"]["shards"]}.items()


def megabyte(item: int) -> bytes:
    return bytes(1 << 20)


def test_a_worker_killed_while_sending_a_big_result_fails_the_map_instead_of_hanging_it():
    for trial in range(10):  # each kill lands at another point of the results' traffic
        workers = step.Workers(2, None, None)
        outcome = {}

        def drain():
            try:
                for number, _ in enumerate(workers.map(megabyte, list(range(400)), batch=1)):
                    if number == 3 + trial:
                        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
            except Exception as e:  # noqa: BLE001 - the test asserts which
                outcome["error"] = e
            workers.close()

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        drainer.join(30)
        assert isinstance(outcome.get("error"), step.BrokenProcessPool), f"trial {trial}: {outcome or 'hung'}"
        assert not os.path.exists(workers.spill), "the spilled results outlived the map"


def test_synthetic_is_deterministic_and_holds_out_compositions(tmp_path):
    options = dict(samples=300, image_size=48, shard_size=100, eval_samples_per_class=3, workers=1)
    step.prepare_synthetic(step.SyntheticOptions(out=str(tmp_path / "a"), seed=3, **options))
    step.prepare_synthetic(step.SyntheticOptions(out=str(tmp_path / "b"), seed=3, **options))
    step.prepare_synthetic(step.SyntheticOptions(out=str(tmp_path / "c"), seed=4, **options))
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")
    assert shard_files(tmp_path / "a") != shard_files(tmp_path / "c")
    for name in ("compositions", "counts"):
        assert shard_files(tmp_path / "a" / "eval" / name) == shard_files(tmp_path / "b" / "eval" / name)

    heldout = synthetic.heldout_compositions(3)
    captions = [c for s in samples(tmp_path / "a").values() for c in s["captions"]]
    assert len(captions) == 4 * 300
    for colour, shape in heldout:
        for plural in (shape, shape + "s", shape + "es"):
            assert not any(f"{colour} {plural}" in c or f"{colour} solid {plural}" in c for c in captions)
    classes = (tmp_path / "a" / "eval" / "compositions" / "classes.txt").read_text().splitlines()
    assert classes == [f"{colour} {shape}" for colour, shape in heldout]
    manifest = assert_accounting(tmp_path / "a" / "eval" / "compositions")
    assert manifest["rows_written"] == 3 * len(heldout)


def test_partitions_merge_into_the_rows_of_one_run(tmp_path):
    options = dict(samples=240, image_size=32, shard_size=40, eval_samples_per_class=2, workers=1, seed=1)
    step.prepare_synthetic(step.SyntheticOptions(out=str(tmp_path / "whole"), **options))
    for index in range(3):
        step.prepare_synthetic(step.SyntheticOptions(out=str(tmp_path / f"part{index}"), partition=f"{index}/3",
                                                     **options))
    merged = merge(MergeOptions(out=str(tmp_path / "merged"), parts=[str(tmp_path / f"part{i}") for i in range(3)]))
    whole = assert_accounting(tmp_path / "whole")
    assert_accounting(tmp_path / "merged")
    assert {k: merged[k] for k in ("rows_in", "rows_written", "rows_rejected")} == \
           {k: whole[k] for k in ("rows_in", "rows_written", "rows_rejected")}
    assert samples(tmp_path / "merged") == samples(tmp_path / "whole")
    assert (tmp_path / "merged" / "eval" / "counts" / "classes.txt").is_file()

    with pytest.raises(SystemExit, match="each of the 3 partitions exactly once"):
        merge(MergeOptions(out=str(tmp_path / "bad"), parts=[str(tmp_path / "part0"), str(tmp_path / "part0")]))


def test_cli_params_file_and_flags(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  samples: 20\n  image_size: 32\n  eval_samples_per_class: 1\n  workers: 1\n")
    result = subprocess.run([sys.executable, "-m", "kubeclip.components.cli", "prepare", "synthetic",
                             "--params", str(params), "--out", str(tmp_path / "out"), "--samples", "10"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["rows_in"] == 40  # the flag wins over the file
    assert samples(tmp_path / "out")
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert lineage["parameters"]["samples"] == 10 and lineage["parameters"]["image_size"] == 32

    missing = subprocess.run([sys.executable, "-m", "kubeclip.components.cli", "prepare", "captions", "--out", "x"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "--captions" in missing.stderr and "--images" in missing.stderr
