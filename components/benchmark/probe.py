"""Linear probe as in the paper: L2-regularised logistic regression on frozen image embeddings of
the set's probe/ split, scored on test/. The regularisation strength C is chosen by stratified
cross-validation on the training examples alone, so test/ is never seen before scoring.
Few-shot probes (k examples per class) show how many labelled examples zero-shot is worth."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from threadpoolctl import threadpool_limits

from kubeclip.components.benchmark.zeroshot import accuracy, confusion_matrix, per_class_recall

C_GRID = tuple(10.0 ** e for e in range(-2, 5))  # embeddings are unit vectors, so useful C runs large
MAX_FOLDS = 5
MAX_ITER = 1000


@dataclass
class Probe:
    model: LogisticRegression
    C: float
    train_samples: int

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.model.predict(features.double().numpy())).long()


def fit(features: torch.Tensor, labels: torch.Tensor, seed: int = 0, fallback_c: float = 1.0) -> Probe:
    """A probe with C chosen by cross-validation over C_GRID; with one example of some class no fold
    split exists, and `fallback_c` is used."""
    x, y = features.double().numpy(), labels.numpy()
    if len(np.unique(y)) < 2:
        raise SystemExit("a linear probe needs examples of at least two classes in the probe split")
    folds = min(MAX_FOLDS, int(np.bincount(y)[np.unique(y)].min()))
    c = fallback_c
    # One BLAS thread: these problems are small, and BLAS threads fighting torch's OpenMP threads for
    # the cores made each lbfgs iteration 6x slower. lbfgs may stop short of convergence at the
    # largest C; the fit is still usable, and the cross-validation score decides whether it is any good.
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            mean_accuracy = [cross_val_score(_model(c, seed), x, y, cv=cv).mean() for c in C_GRID]
            c = C_GRID[int(np.argmax(mean_accuracy))]  # the first (most regularised) of any tie
        return Probe(_model(c, seed).fit(x, y), c, len(y))


def few_shot_indices(labels: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k examples of each class drawn at random (all of a class that has fewer)."""
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(picked).sort().values


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], classes: int,
                 shots: list[int], seed: int = 0) -> tuple[dict, Probe]:
    """Scores on test/ of the probe trained on all of probe/ and of each few-shot probe, and the
    full probe itself (robustness scores it again on corrupted images)."""
    (train_x, train_y), (test_x, test_y) = train, test
    full = fit(train_x, train_y, seed)
    result = {**_scores(full, test_x, test_y, classes), "few_shot": {}}
    for k in shots:
        index = few_shot_indices(train_y, k, seed)
        probe = fit(train_x[index], train_y[index], seed, fallback_c=full.C)
        result["few_shot"][str(k)] = {"top1": accuracy(probe.predict(test_x), test_y), "C": probe.C,
                                      "train_samples": probe.train_samples}
    return result, full


def _scores(probe: Probe, x: torch.Tensor, y: torch.Tensor, classes: int) -> dict:
    predictions = probe.predict(x)
    confusion = confusion_matrix(y, predictions, classes)
    recall, present = per_class_recall(confusion)
    return {"top1": accuracy(predictions, y), "mean_per_class_recall": recall[present].mean().item(),
            "per_class_recall": recall.tolist(), "C": probe.C, "train_samples": probe.train_samples}


def _model(c: float, seed: int) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)

