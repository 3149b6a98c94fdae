"""Retrieval: recall@k counted right with several captions per image, and Flickr8k's test split end to end."""

import json

import pytest
import torch
import torch.nn.functional as F

from kubeclip.components.benchmark.retrieval import recall_at_k
from kubeclip.components.benchmark.step import BenchmarkOptions, benchmark
from tests.components.benchmark.helpers import flickr_subset, random_checkpoint, report_plots


def test_recall_counts_any_caption_of_an_image():
    images = torch.eye(3)
    texts = F.normalize(torch.tensor([[0.1, 1.0, 0.0],  # image 0's; nearest image: 1
                                      [1.0, 0.2, 0.0],  # image 0's; nearest image: 0
                                      [0.0, 1.0, 0.3],  # image 1's; nearest image: 1
                                      [0.0, 0.2, 1.0],  # image 1's; nearest image: 2, then 1
                                      [0.0, 0.0, 1.0]]), dim=-1)  # image 2's; nearest image: 2
    owners = torch.tensor([0, 0, 1, 1, 2])
    result = recall_at_k(images, texts, owners, ks=(1, 2))
    # nearest captions: image 0 -> caption 1 (its own); image 1 -> caption 0 (image 0's), then caption 2
    # (its own); image 2 -> caption 4 (its own)
    assert result["i2t_r1"] == pytest.approx(2 / 3) and result["i2t_r2"] == 1.0
    assert result["t2i_r1"] == pytest.approx(3 / 5) and result["t2i_r2"] == 1.0


def test_flickr8k_test_split_end_to_end(tmp_path_factory, flickr8k, tmp_path):
    shards = flickr_subset(tmp_path_factory, flickr8k)
    out = tmp_path / "bench"
    metrics = benchmark(BenchmarkOptions(checkpoint=str(random_checkpoint(tmp_path_factory)), out=str(out),
                                         retrieval=str(shards), split="test", max_images=80))
    retrieval = metrics["retrieval"]
    assert retrieval["images"] == 80 and retrieval["texts"] == 5 * 80  # Flickr8k: five captions per image
    for direction in ("i2t", "t2i"):
        r1, r5, r10 = (retrieval[f"{direction}_r{k}"] for k in (1, 5, 10))
        assert 0 <= r1 <= r5 <= r10 <= 1
    assert "zeroshot" not in metrics and metrics["dataset"]["split"] == "test"
    assert json.loads((out / "metrics.json").read_text())["retrieval"] == retrieval
    assert set(report_plots(out / "report.html")) == {"retrieval-recall"}
