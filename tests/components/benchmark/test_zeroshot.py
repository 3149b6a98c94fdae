"""Zero-shot on a briefly trained model: far above chance on the synthetic held-out compositions, and
the same numbers as an independent computation with open_clip (same weights, same templates)."""

import io
import json
import tarfile
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms as T

from kubeclip.components.benchmark.step import BenchmarkOptions, benchmark
from kubeclip.components.benchmark.templates import ENSEMBLE
from kubeclip.components.prepare.synthetic import COMPOSITION_TEMPLATES
from tests.components.benchmark.helpers import cifar_subset, report_plots, trained_synthetic


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_synthetic(tmp_path_factory)


def test_trained_model_beats_chance_and_report_renders(trained, tmp_path):
    out = tmp_path / "bench"
    metrics = benchmark(BenchmarkOptions(checkpoint=str(trained / "run"), out=str(out), linear_probe=True,
                                         classification=str(trained / "data" / "eval" / "compositions"),
                                         cache_dir=str(tmp_path / "cache")))
    zeroshot = metrics["zeroshot"]
    chance = 1 / len(zeroshot["classes"])
    assert zeroshot["templates"] == len(COMPOSITION_TEMPLATES)  # the set's own built-in templates by default
    assert zeroshot["top1"] >= 2.5 * chance, zeroshot["top1"]
    assert zeroshot["top5"] >= zeroshot["top1"]
    assert metrics["linear_probe"]["top1"] > chance
    assert json.loads((out / "metrics.json").read_text()) == metrics
    plots = report_plots(out / "report.html")
    assert {"per-class-accuracy", "confusion-matrix", "zeroshot-vs-probe"} <= set(plots)
    assert "| zeroshot | top1 |" in (out / "summary.md").read_text()


def reference_zeroshot(weights: Path, root: Path, templates: list[str], max_images: int | None = None) -> dict:
    """Top-1, top-5 and single-template top-1 computed with open_clip's model and tokenizer, a plain
    torchvision transform and the test shards read with tarfile: nothing of kubeclip's but the config."""
    cfg = json.loads((weights / "config.json").read_text())
    clip = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                                quick_gelu=cfg.get("quick_gelu", False))
    clip.load_state_dict(load_file(weights / "model.safetensors"))
    clip.eval()
    size = cfg["vision_cfg"]["image_size"]
    transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                           T.ToTensor(), T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])
    manifest = json.loads((root / "manifest.json").read_text())
    samples: dict[str, dict[str, bytes]] = {}
    for shard in manifest["splits"]["test"]["shards"]:
        with tarfile.open(root / shard["name"]) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    samples = dict(list(samples.items())[:max_images])
    images = torch.stack([transform(Image.open(io.BytesIO(s.get("jpg") or s["png"])).convert("RGB"))
                          for s in samples.values()])
    labels = torch.tensor([int(s["cls"]) for s in samples.values()])
    classnames = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    with torch.no_grad():
        image_features = F.normalize(clip.encode_image(images), dim=-1)
        ensemble, single = [], []
        for name in classnames:
            text = F.normalize(clip.encode_text(open_clip.tokenize([t.format(c=name) for t in templates])), dim=-1)
            ensemble.append(F.normalize(text.mean(dim=0), dim=-1))
            single.append(text[0])
    logits = image_features @ torch.stack(ensemble).T
    return {"top1": (logits.argmax(dim=1) == labels).float().mean().item(),
            "top5": (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item(),
            "single_template_top1": ((image_features @ torch.stack(single).T).argmax(dim=1) == labels)
            .float().mean().item(),
            "images": len(labels)}


@pytest.mark.parametrize("dataset", ["compositions", "cifar10"])
def test_zeroshot_equals_open_clip_reference(dataset, trained, tmp_path_factory, request, tmp_path):
    if dataset == "compositions":
        root, templates, max_images = trained / "data" / "eval" / "compositions", list(COMPOSITION_TEMPLATES), None
    else:
        root, templates, max_images = cifar_subset(tmp_path_factory, request.getfixturevalue("cifar10")), \
            list(ENSEMBLE), 300
    weights = trained / "run" / "checkpoints" / (trained / "run" / "checkpoints" / "latest").read_text().strip()
    ours = benchmark(BenchmarkOptions(checkpoint=str(weights), out=str(tmp_path / "bench"), classification=str(root),
                                      templates="compositions" if dataset == "compositions" else "ensemble",
                                      max_images=max_images, cache=False))["zeroshot"]
    reference = reference_zeroshot(weights, root, templates, max_images)
    assert ours["images"] == reference["images"]
    for key in ("top1", "top5", "single_template_top1"):
        assert abs(ours[key] - reference[key]) <= 0.001, (key, ours[key], reference[key])
