"""Zero-shot evaluation speed on the CIFAR-10 test set, and what the text-classifier cache saves.

1. Images/s of zero-shot evaluation as `kubeclip benchmark` runs it: shards read, images decoded and
   transformed, the image tower, scores against the text classifier (median over rounds).
2. The text classifier's cost built from the text tower (no cache), built and stored (cold cache) and
   read back (warm cache), for CIFAR-10's 10 classes and for 1,000 classes (ImageNet's scale; class
   names made up, "class 0" ... "class 999"), each with the 18-template ensemble. The ratio
   no-cache / warm cache is what the cache saves on every later run of the same model.

The model is a small built-in config with random weights (speed does not depend on the weights);
nothing is downloaded. CIFAR-10 comes from ../shared/data/cifar10-test and is prepared at 64 px
with every image in test/ (--probe-fraction 0) unless --data names a prepared set.

    python benchmarks/zeroshot_throughput.py                       # tiny-vit, 10,000 images, 3 rounds
    python benchmarks/zeroshot_throughput.py --model tiny-rn --rounds 5 --max-images 2000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kubeclip import model
from kubeclip.components.benchmark.cache import ClassifierCache
from kubeclip.components.benchmark.encoders import TorchEncoder
from kubeclip.components.benchmark.features import embed_labelled
from kubeclip.components.benchmark.templates import ENSEMBLE
from kubeclip.components.benchmark.zeroshot import scores, text_classifier
from kubeclip.components.datasets import class_names
from kubeclip.components.prepare import step as prepare

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data", type=Path, help="a prepared classification set (default: prepare CIFAR-10 here)")
    parser.add_argument("--cifar", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-test",
                        help="raw CIFAR-10 test set (labels.csv, classes.txt, test/) to prepare")
    parser.add_argument("--model", default="tiny-vit", help="built-in config, random weights (default: tiny-vit)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    parser.add_argument("--rounds", type=int, default=3, help="timed zero-shot passes (default: 3)")
    parser.add_argument("--max-images", type=int, help="at most this many test images (default: all)")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000],
                        help="class counts of the classifier-cost measurement (default: 10 1000)")
    return parser.parse_args()


def zeroshot_rounds(encoder: TorchEncoder, root: str, rounds: int, max_images: int | None) -> list[float]:
    """Images/s of each full zero-shot pass over the test split."""
    text = text_classifier(encoder, class_names(root), list(ENSEMBLE))
    embed_labelled(encoder, root, "test", 256)  # warm-up: allocator, thread pool, page cache
    speeds = []
    for _ in range(rounds):
        start = time.perf_counter()
        images, labels = embed_labelled(encoder, root, "test", max_images)
        scores(images, labels, text)
        speeds.append(len(labels) / (time.perf_counter() - start))
    return speeds


def classifier_costs(encoder: TorchEncoder, classes: list[str], cache_dir: Path) -> dict[str, float]:
    """Seconds to get the classifier without a cache, with a cold cache and with a warm one."""
    templates = list(ENSEMBLE)
    text_classifier(encoder, classes[:2], templates)  # warm-up
    cache = ClassifierCache(cache_dir, f"benchmark-{len(classes)}")
    costs = {}
    for name, use in (("no cache", None), ("cold cache", cache), ("warm cache", cache)):
        start = time.perf_counter()
        text_classifier(encoder, classes, templates, use)
        costs[name] = time.perf_counter() - start
    return costs


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        root = args.data
        if root is None:
            root = work / "cifar"
            started = time.perf_counter()
            prepare.prepare_classification(prepare.ClassificationOptions(
                root=str(args.cifar), out=str(root), image_size=64, probe_fraction=0))
            print(f"prepared CIFAR-10 at 64 px in {time.perf_counter() - started:.1f} s")
        torch.manual_seed(0)
        encoder = TorchEncoder(model.build(args.model), batch_size=args.batch_size)

        speeds = zeroshot_rounds(encoder, str(root), args.rounds, args.max_images)
        print(f"\nzero-shot, {args.model} (random weights), {torch.get_num_threads()} threads, "
              f"batch {args.batch_size}: median {statistics.median(speeds):.0f} images/s "
              f"(rounds: {', '.join(f'{s:.0f}' for s in speeds)})")

        print(f"\ntext classifier, {len(ENSEMBLE)} templates   no cache   cold cache   warm cache   "
              f"no cache / warm")
        real = class_names(str(root))
        for count in args.classes:
            classes = real if count == len(real) else [f"class {i}" for i in range(count)]
            costs = classifier_costs(encoder, classes, work / "cache")
            print(f"{count:>5} classes ({count * len(ENSEMBLE):>6} prompts)     {costs['no cache']:7.3f} s  "
                  f"{costs['cold cache']:8.3f} s  {costs['warm cache']:9.4f} s   "
                  f"{costs['no cache'] / costs['warm cache']:10.0f}x")


if __name__ == "__main__":
    main()
