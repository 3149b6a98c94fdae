"""Lineage: each step's lineage.json carries its inputs' producers, so the last one holds the whole chain,
which the KFP metadata and the InferenceService annotations carry one line per step."""

import json
import time

from kubeclip.components.lineage import chain, lineage_metadata, producer_lineage, read_lineage, write_lineage


def test_each_record_carries_the_chain_back_to_the_data(tmp_path):
    data, run, export = tmp_path / "data", tmp_path / "run", tmp_path / "export"
    write_lineage(str(data), "prepare synthetic", {}, {"samples": 8}, time.time())
    weights = run / "checkpoints" / "step-00000002" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    write_lineage(str(run), "train", {"data": {"url": str(data), "manifest_sha256": "ab"}}, {"steps": 2}, time.time())
    # the export reads the weights three folders below the run; the repository reads the export twice
    write_lineage(str(export), "export", {"checkpoint": {"url": str(weights), "sha256": "c0ffee" * 10}}, {},
                  time.time())
    write_lineage(str(tmp_path / "repo"), "triton-repo",
                  {"export": {"url": str(export), "model_id": "c0ffeec0ffee"},
                   "image_encoder": {"url": str(export / "image_encoder.onnx"), "sha256": "12"},
                   "unrelated": {"url": str(tmp_path / "elsewhere"), "sha256": "34"}}, {}, time.time())

    record = read_lineage(str(tmp_path / "repo"))
    assert record["inputs"]["export"]["lineage"]["inputs"]["checkpoint"]["lineage"]["step"] == "train"
    assert "lineage" not in record["inputs"]["unrelated"]
    steps = chain(record)
    assert [s["step"] for s in steps] == ["triton-repo", "export", "train", "prepare synthetic"]  # each once
    assert steps[2]["inputs"] == {"data": {"url": str(data), "manifest_sha256": "ab"}}  # no nested records
    assert steps[0]["inputs"]["export"]["model_id"] == "c0ffeec0ffee"
    assert json.loads(json.dumps(lineage_metadata(str(tmp_path / "repo")))) == {"lineage": steps}


def test_inputs_without_a_producer_nearby_have_no_lineage(tmp_path):
    (tmp_path / "a" / "b" / "c" / "d" / "e").mkdir(parents=True)
    write_lineage(str(tmp_path), "prepare synthetic", {}, {}, time.time())
    assert producer_lineage(str(tmp_path / "a" / "b" / "c")) is not None  # three folders up
    assert producer_lineage(str(tmp_path / "a" / "b" / "c" / "d")) is None  # four: someone else's
    assert read_lineage(str(tmp_path / "a")) is None and lineage_metadata(str(tmp_path / "a")) == {}
