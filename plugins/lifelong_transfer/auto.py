"""``auto``: the four-quadrant rule, with data size counted and similarity measured.

Two questions pick the strategy (the classic transfer-learning quadrants):

============  =====================  ====================
              similar to the source  different
============  =====================  ====================
small data    feature-extractor      fine-tune-top
large data    fine-tune-top          fine-tune-all
============  =====================  ====================

**Size**: samples per class of the whole stream, large from ``large_per_class`` (default 500).

**Similarity** is measured, not asked: on a warm-up window of the stream, a ridge-regression
linear probe (one-hot targets, 5-fold cross-validation, the ridge strength picked from three by the
same folds) is fitted once on the backbone's features and once on the raw inputs ("no transfer").
``similarity = probe(backbone) - probe(raw)``; the domain counts as similar when it is at least
``similarity_margin`` (default -0.1). The margin is below 0 because a 5-fold probe on a few
hundred samples moves by several points from window to window: measured on Fashion-MNIST with
EfficientNet-Lite0 at 48 px the difference lies between -0.07 and +0.09 (similar enough: the
ImageNet features are as linearly informative as the pixels), on pixel-permuted Fashion-MNIST
between -0.26 and -0.13 (the features lost what the task needs). Comparing against the raw
inputs instead of an absolute accuracy makes the rule independent of how hard the task is.

When the probe cannot be computed (fewer than 10 samples or a single class in the window) the
similarity is unknown and the rule picks fine-tune-top, the middle choice, and says so.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> y = torch.arange(60) % 3
>>> good = torch.nn.functional.one_hot(y, 3).float() + 0.1 * torch.randn(60, 3, generator=g)
>>> noise = torch.randn(60, 20, generator=g)
>>> decide(10.0, good, noise, y)["strategy"], decide(10.0, noise, good, y)["strategy"]
('feature-extractor', 'fine-tune-top')
>>> decide(5000.0, good, noise, y)["strategy"], decide(5000.0, noise, good, y)["strategy"]
('fine-tune-top', 'fine-tune-all')
"""

from __future__ import annotations

import math
from typing import Any

import torch

CODES = {"feature-extractor": 0, "fine-tune-top": 1, "fine-tune-all": 2}
RIDGE = (0.01, 0.1, 1.0)  # ridge strengths, relative to the mean diagonal of the Gram matrix
FOLDS = 5


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, folds: int = FOLDS) -> float:
    """Cross-validated accuracy of a ridge linear probe on features ``x`` (N, D) for labels ``y``; NaN if undefined.

    Folds are interleaved (sample i in fold i mod folds), features are standardised with the training
    folds' statistics, and the dual form keeps it cheap for wide features (one N×N solve per fold).
    """
    y = torch.as_tensor(y).long().cpu()
    x = x.detach().double().cpu().flatten(1)
    classes, y = torch.unique(y, return_inverse=True)
    n, k = len(y), len(classes)
    if n < 2 * folds or k < 2:
        return math.nan
    fold = torch.arange(n) % folds
    best = 0.0
    for rel in RIDGE:
        correct = 0
        for f in range(folds):
            train, test = fold != f, fold == f
            mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
            a, b = (x[train] - mu) / sd, (x[test] - mu) / sd
            gram = a @ a.T
            lam = rel * float(torch.diagonal(gram).mean().clamp_min(1e-12))
            target = torch.nn.functional.one_hot(y[train], k).double()
            target = target - target.mean(0)
            alpha = torch.linalg.solve(gram + lam * torch.eye(len(a), dtype=gram.dtype), target)
            scores = b @ (a.T @ alpha)
            correct += int((scores.argmax(1) == y[test]).sum())
        best = max(best, correct / n)
    return best


def decide(
    samples_per_class: float | None,
    features: torch.Tensor | None,
    raw: torch.Tensor | None,
    labels: torch.Tensor | None,
    large_per_class: int = 500,
    margin: float = -0.1,
) -> dict[str, Any]:
    """The strategy for this data, and the measurements behind it (see the module docstring)."""
    if features is not None and labels is not None and raw is not None:
        backbone_acc, raw_acc = probe_accuracy(features, labels), probe_accuracy(raw, labels)
        window = int(len(labels))
    else:
        backbone_acc = raw_acc = math.nan
        window = 0
    similarity = backbone_acc - raw_acc
    similar = None if math.isnan(similarity) else bool(similarity >= margin)
    # An unknown size counts as large: a stream that does not say how long it is keeps coming.
    large = samples_per_class is None or samples_per_class >= large_per_class
    if similar is None:
        strategy = "fine-tune-top"
    elif large:
        strategy = "fine-tune-top" if similar else "fine-tune-all"
    else:
        strategy = "feature-extractor" if similar else "fine-tune-top"
    return {
        "strategy": strategy,
        "samples_per_class": math.nan if samples_per_class is None else float(samples_per_class),
        "large": large,
        "large_per_class": large_per_class,
        "probe_backbone": backbone_acc,
        "probe_raw": raw_acc,
        "similarity": similarity,
        "similar": similar,
        "margin": margin,
        "warmup_samples": window,
    }


def describe(decision: dict[str, Any]) -> str:
    """One line: the strategy and why."""
    spc = decision["samples_per_class"]
    size = "unknown size (counted as large)" if math.isnan(spc) else f"{spc:.0f} samples/class"
    size += f" ({'large' if decision['large'] else 'small'}, threshold {decision['large_per_class']})"
    if decision["similar"] is None:
        sim = f"similarity unknown ({decision['warmup_samples']} warm-up samples, too few or one class)"
    else:
        sim = (
            f"similarity {decision['similarity']:+.3f} = backbone probe {decision['probe_backbone']:.3f} - raw probe "
            f"{decision['probe_raw']:.3f} on {decision['warmup_samples']} warm-up samples "
            f"({'similar' if decision['similar'] else 'different'}, margin {decision['margin']:+.2f})"
        )
    return f"{decision['strategy']}: {size}; {sim}"


def metrics(decision: dict[str, Any]) -> dict[str, float]:
    """The decision as metrics (NaN values are skipped by trackers)."""
    return {
        "transfer/strategy": float(CODES[decision["strategy"]]),
        "transfer/similarity": float(decision["similarity"]),
        "transfer/probe_backbone": float(decision["probe_backbone"]),
        "transfer/probe_raw": float(decision["probe_raw"]),
        "transfer/samples_per_class": float(decision["samples_per_class"]),
    }
