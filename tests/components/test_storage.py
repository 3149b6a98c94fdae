"""components/storage.py and the checkpoint helpers built on it, on fsspec's in-memory filesystem: a remote store
without a server (tests/test_object_store.py runs every step on a real S3-protocol one)."""

import uuid
from pathlib import Path

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from kubeclip import model
from kubeclip.components.storage import local_copy, local_output, publish, storage_uri
from kubeclip.components.train.checkpoints import MARKER, STATE_FILE, Checkpoints, load_state, local_weights


@pytest.fixture
def remote():
    """A fresh memory:// folder, removed afterwards (the memory filesystem is one store per process)."""
    url = f"memory://kubeclip-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def files(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    return {path[len(root) + 1:]: fs.cat_file(path) for path in fs.find(root)}


def test_publish_uploads_the_markers_last_and_replaces_whole_folders(remote, tmp_path, monkeypatch):
    for name in ("a.txt", "m/1/model.py", "lineage.json", "COMMITTED"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    fs = fsspec.filesystem("memory")
    fs.pipe({f"{remote}/m/1/stale.plan": b"old", f"{remote}/m/2/kept.py": b"v2"})
    order = []
    put_file = MemoryFileSystem.put_file
    monkeypatch.setattr(MemoryFileSystem, "put_file",
                        lambda self, lpath, rpath, **kw: order.append(rpath) or put_file(self, lpath, rpath, **kw))
    publish(tmp_path, remote, last=("lineage.json", "COMMITTED"), replace=("m/1",))
    assert [p.rsplit("/", 1)[-1] for p in order[-2:]] == ["lineage.json", "COMMITTED"]
    assert files(remote) == {"a.txt": b"a.txt", "m/1/model.py": b"m/1/model.py", "m/2/kept.py": b"v2",
                             "lineage.json": b"lineage.json", "COMMITTED": b"COMMITTED"}


def test_local_output_publishes_only_a_block_that_ends_well(remote, tmp_path):
    with local_output(remote) as folder:
        (folder / "x").write_text("done")
    assert files(remote) == {"x": b"done"}
    with pytest.raises(RuntimeError), local_output(f"{remote}/failed") as folder:
        (folder / "half").write_text("half")
        raise RuntimeError("the step failed")
    assert "failed/half" not in files(remote)
    with local_output(str(tmp_path / "here")) as folder:  # a local output is written in place
        assert folder == tmp_path / "here" and folder.is_dir()


def test_local_copy_downloads_folders_files_and_chosen_names(remote, tmp_path):
    fsspec.filesystem("memory").pipe({f"{remote}/d/a": b"A", f"{remote}/d/sub/b": b"B", f"{remote}/d/big": b"X"})
    with local_copy(f"{remote}/d") as local:
        assert sorted(p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()) == \
            ["a", "big", "sub/b"]
    assert not Path(local).exists()  # removed on exit
    with local_copy(f"{remote}/d", only=("a", "sub", "absent")) as local:
        assert sorted(p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()) == ["a", "sub/b"]
    with local_copy(f"{remote}/d/a") as local:
        assert Path(local).read_bytes() == b"A"
    with local_copy(str(tmp_path)) as local:  # a local path is used where it is
        assert local == str(tmp_path)


def test_remote_checkpoints_commit_and_load_their_weights_alone(remote):
    torch.manual_seed(0)
    clip = model.build("tiny-vit")
    checkpoints = Checkpoints(remote)
    for step in (1, 2):
        checkpoints.save(clip, {"step": step}, step, keep_last=1)
    stored = files(f"{remote}/checkpoints")
    assert stored["latest"] == b"step-00000002\n"
    assert f"step-00000002/{MARKER}" in stored and not any(name.startswith("step-00000001") for name in stored)
    assert checkpoints.latest() == f"{remote}/checkpoints/step-00000002"

    with local_weights(remote) as (url, weights):  # a train --out folder, followed through `latest`
        assert url == f"{remote}/checkpoints/step-00000002/model.safetensors"
        assert not (weights.parent / STATE_FILE).exists()  # the training state is not fetched for the weights
        loaded = model.load(weights)
        assert all(torch.equal(v, clip.state_dict()[k]) for k, v in loaded.state_dict().items())
    weights, state = load_state(checkpoints.latest())
    assert state == {"step": 2} and weights.keys() == clip.state_dict().keys()
    with pytest.raises(FileNotFoundError, match="no weights at"):
        with local_weights(f"{remote}/nothing"):
            pass


def test_storage_uri_maps_kfp_artifact_uris_for_fsspec_and_kserve():
    assert storage_uri("minio://mlpipeline/v2/artifacts/run/train") == "s3://mlpipeline/v2/artifacts/run/train"
    for unchanged in ("s3://bucket/key", "gs://bucket/key", "/tmp/local/outputs/model", "relative/path",
                      "file:///tmp/model"):
        assert storage_uri(unchanged) == unchanged
    for refused in ("https://host/model", "hdfs://namenode/model", "oci://registry/model"):
        with pytest.raises(ValueError, match="--pipeline-root s3://bucket/prefix"):
            storage_uri(refused)
