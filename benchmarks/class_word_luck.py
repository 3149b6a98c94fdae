"""How much of CIFAR-10 zero-shot after training on Flickr8k is the luck of initialisation (issue 9).

Five CIFAR-10 class names are words the Flickr8k training captions barely use (in all five captions of each
of the 6,000 photos: "automobile" once, "frog" 5 times, "deer" 11, "ship" 14, "airplane" 15), so their rows of
the token embedding end training near where the seed put them. This replaces those rows (class words used fewer
than --rare times) by rows of tokens the captions never use, which training left as initialised (or, under
open_clip's weight decay, shrunk alike), --draws times, and scores CIFAR-10 again each time. The spread of those
scores is how far the initial draw of a handful of rows moves CIFAR-10 in a model otherwise unchanged, to set
beside the margin a goal of 1.1x asks for (a tenth of the trained score). Every checkpoint must use the CLIP BPE.

Beside it, the trained score taken apart: "renamed" is CIFAR-10 with the classes of --rename named by the words
the captions use for those objects (car 327 times, boat 228); "taught" is the mean recall of the classes whose
words the captions do use (bird, cat, dog, horse, truck), "5-way" the top-1 of a classifier of those classes
alone on their images (chance 20%), and "rare share" how many of the correct answers fall on the redrawn classes.

    python benchmarks/class_word_luck.py --work runs/recipe-vs-open-clip runs/recipe-vs-open-clip/runs/scratch-seed0 \\
        runs/recipe-vs-open-clip/open_clip-logs/open_clip-seed0/checkpoints/epoch_1.pt

--work is recipe_vs_open_clip.py's work folder: its prepared Flickr8k and CIFAR-10 are read from there.
"""

from __future__ import annotations

import argparse
import collections
import statistics
from pathlib import Path

import torch

from kubeclip import model
from kubeclip.components.benchmark.encoders import TorchEncoder
from kubeclip.components.benchmark.features import embed_labelled
from kubeclip.components.benchmark.templates import resolve_templates
from kubeclip.components.benchmark.zeroshot import TextClassifier, scores, text_classifier
from kubeclip.components.datasets import captions, class_names, split_samples
from kubeclip.model.tokenizer import ClipTokenizer, default_tokenizer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="trained checkpoints (anything model.load accepts)")
    p.add_argument("--work", type=Path, required=True, help="recipe_vs_open_clip.py's work folder")
    p.add_argument("--rare", type=int, default=20,
                   help="class words the captions use fewer times are redrawn (default: %(default)s)")
    p.add_argument("--draws", type=int, default=10, help="redraws per checkpoint (default: %(default)s)")
    p.add_argument("--rename", nargs="*", default=["automobile=car", "ship=boat"], metavar="CLASS=WORD",
                   help="the 'renamed' column scores CIFAR-10 with these classes named by the words the captions "
                        "use for them (default: %(default)s)")
    args = p.parse_args()
    try:
        args.rename = dict(pair.split("=", 1) for pair in args.rename)
    except ValueError:
        p.error(f"--rename {' '.join(args.rename)}: expected CLASS=WORD pairs, e.g. automobile=car")
    return args


def token_counts(data: Path, tokenizer: ClipTokenizer) -> collections.Counter:
    """How often each token occurs in the training captions."""
    counts = collections.Counter()
    for _, files in split_samples(str(data), "train"):
        for caption in captions(files):
            counts.update(tokenizer.encode(caption))
    return counts


def taken_apart(result: dict, images: torch.Tensor, labels: torch.Tensor, text: TextClassifier,
                taught: torch.Tensor) -> tuple[float, float, float]:
    """(mean recall % of the taught classes, top-1 % of the taught classes alone on their images, share of
    the correct answers on the other classes)."""
    recall = torch.tensor(result["per_class_recall"])[taught].mean().item()
    hits = torch.tensor(result["confusion_matrix"]).diagonal()
    shown = torch.isin(labels, taught)
    predicted = (images[shown] @ text.ensemble[taught].T).argmax(dim=1)
    taught_only = (predicted == torch.searchsorted(taught, labels[shown])).float().mean().item()
    return 100 * recall, 100 * taught_only, 1 - (hits[taught].sum() / hits.sum()).item()


def main() -> None:
    args = parse_args()
    data, cifar = args.work / "flickr8k", str(args.work / "cifar10")
    tokenizer = default_tokenizer()
    counts = token_counts(data, tokenizer)
    names, templates = class_names(cifar), resolve_templates(None, "cifar10")
    words = {name: tokenizer.encode(name) for name in names}
    rare = sorted({i for ids in words.values() for i in ids if counts[i] < args.rare})
    unseen = torch.tensor([i for i in range(tokenizer.sot_token_id) if counts[i] == 0])  # the special ids last
    if unknown := set(args.rename) - set(names):
        raise SystemExit(f"--rename: {', '.join(sorted(unknown))} not among the classes ({', '.join(names)})")
    renamed = [args.rename.get(name, name) for name in names]
    print("class words and their uses in the training captions:",
          ", ".join(f"{n} {min(counts[i] for i in tokenizer.encode(n))}" for n in [*names, *args.rename.values()]))
    taught = torch.tensor([c for c, ids in enumerate(words.values()) if all(i not in rare for i in ids)])
    print(f"redrawn: {', '.join(tokenizer.decode([i]) for i in rare)}; taught: {', '.join(names[c] for c in taught)}\n")
    width = max(len(c) for c in args.checkpoints)
    n_way = f"{len(taught)}-way"
    print(f"{'checkpoint':<{width}} {'trained':>7} {'renamed':>7} {'taught':>6} {n_way:>5} {'rare share':>10} "
          f"{'redrawn: min':>12} {'mean':>5} {'max':>5} {'spread':>6} {'spread / 10% of trained':>23}")
    for checkpoint in args.checkpoints:
        clip = model.load(checkpoint)
        if not isinstance(clip.tokenizer, ClipTokenizer):
            raise SystemExit(f"{checkpoint}: its text tower has its own tokenizer; this measures CLIP BPE towers")
        encoder = TorchEncoder(clip)
        images, labels = embed_labelled(encoder, cifar, "test")
        table = clip.token_embedding.weight
        trained = table.detach().clone()
        text = text_classifier(encoder, names, templates)
        as_trained = scores(images, labels, text)
        as_renamed = 100 * scores(images, labels, text_classifier(encoder, renamed, templates))["top1"]
        top1 = [100 * as_trained["top1"]]
        for draw in range(1, args.draws + 1):
            order = torch.randperm(len(unseen), generator=torch.Generator().manual_seed(draw))
            with torch.no_grad():  # every draw overwrites the same rows, so nothing needs restoring
                table[rare] = trained[unseen[order[:len(rare)]]]
            top1.append(100 * scores(images, labels, text_classifier(encoder, names, templates))["top1"])
        redrawn, spread = top1[1:], max(top1[1:]) - min(top1[1:])
        recall, taught_only, rare_share = taken_apart(as_trained, images, labels, text, taught)
        print(f"{checkpoint:<{width}} {top1[0]:7.1f} {as_renamed:7.1f} {recall:6.1f} {taught_only:5.1f} "
              f"{rare_share:10.0%} {min(redrawn):12.1f} {statistics.mean(redrawn):5.1f} {max(redrawn):5.1f} "
              f"{spread:6.1f} {spread / (0.1 * top1[0]):22.1f}x", flush=True)


if __name__ == "__main__":
    main()
