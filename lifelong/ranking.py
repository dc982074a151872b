"""Ranking metrics of an anomaly score: ROC-AUC and PR-AUC, exact on held-out sets, binned on a stream.

Labels are ``1`` = anomaly (the positive class) and ``0`` = normal; a higher score means more
anomalous. Both exact metrics agree with scikit-learn (``roc_auc_score``,
``average_precision_score``) including ties, and are None where they are undefined: a set holding
only one of the two classes.

The stream's prequential ROC-AUC cannot keep every score of an unbounded stream, nor read them to
the host per batch, so :class:`ScoreHistogram` counts scores per class in fixed bins on the
device (a symmetric log scale: bins 1.9 % wide in relative terms, for magnitudes from 1e-17 to
1e17, the sign kept, so any real score keeps its order) and computes the AUC
from the two histograms, counting a tie within a bin as half (as the exact metric counts equal
scores). Its error is bounded by the pairs that share a bin; river's ``ROCAUC`` is approximate
in the same spirit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BINS = 8192
DECADES = 17.0  # magnitudes from 10^-DECADES to 10^DECADES; sign(s)·(log10|s| + DECADES) spans [-SPAN, SPAN]
SPAN = 2 * DECADES


def _binary(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray] | None:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    keep = (y == 0) | (y == 1)
    s, y = s[keep], y[keep].astype(np.int64)
    if y.size == 0 or y.min() == y.max():
        return None
    return s, y


def roc_auc(scores: Any, labels: Any) -> float | None:
    """Area under the ROC curve: the probability that an anomaly outscores a normal sample (ties ½)."""
    data = _binary(scores, labels)
    if data is None:
        return None
    s, y = data
    order = np.argsort(s, kind="mergesort")
    s, y = s[order], y[order]
    # average ranks of tied scores (1-based), then the Mann–Whitney U statistic
    ranks = np.empty(s.size, dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], s.size]
    for start, end in zip(starts, ends):
        ranks[start:end] = (start + end + 1) / 2.0
    positives = int(y.sum())
    negatives = y.size - positives
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def pr_auc(scores: Any, labels: Any) -> float | None:
    """Average precision, Σ_k (R_k − R_{k−1})·P_k over distinct score thresholds (scikit-learn's definition)."""
    data = _binary(scores, labels)
    if data is None:
        return None
    s, y = data
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def at_threshold(scores: Any, labels: Any, threshold: float) -> dict[str, float | None]:
    """Precision, recall, F1 and false-alarm rate of the flags ``score > threshold``."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    keep = (y == 0) | (y == 1)
    flags, y = s[keep] > threshold, y[keep] == 1
    tp, fp = int(np.sum(flags & y)), int(np.sum(flags & ~y))
    fn, tn = int(np.sum(~flags & y)), int(np.sum(~flags & ~y))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": fp / (fp + tn) if fp + tn else None,
        "anomalies": tp + fn,
        "normals": fp + tn,
    }


class ScoreHistogram:
    """Per-class counts of scores in fixed bins, on the device; the AUC is read on the host."""

    def __init__(self, device: torch.device):
        # row 0: normal, row 1: anomaly, and one spare cell for samples without a label
        self.counts = torch.zeros(2 * BINS + 1, dtype=torch.int64, device=device)

    def add(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Count a batch's scores by label (0/1); other labels (no label, -1) are not counted. No host sync."""
        s = scores.detach().to(torch.float32)
        # log10 of the magnitude, not log1p: scores of reconstruction errors are often far below 1
        magnitude = torch.log10(s.abs()).clamp(-DECADES, DECADES) + DECADES
        s = torch.nan_to_num(torch.sign(s) * magnitude, nan=SPAN, posinf=SPAN, neginf=-SPAN)
        cell = ((s + SPAN) * (BINS / (2 * SPAN))).clamp_(0, BINS - 1).to(torch.int64)
        labels = labels.to(torch.int64)
        known = (labels == 0) | (labels == 1)
        index = torch.where(known, cell + BINS * labels.clamp(0, 1), torch.full_like(cell, 2 * BINS))
        self.counts.index_add_(0, index, torch.ones_like(index))

    def auc(self) -> float | None:
        counts = self.counts.cpu().numpy().astype(np.float64)
        normal, anomaly = counts[:BINS], counts[BINS : 2 * BINS]
        n, p = normal.sum(), anomaly.sum()
        if n == 0 or p == 0:
            return None
        below = np.cumsum(normal) - normal  # normals in lower bins
        return float((anomaly * (below + 0.5 * normal)).sum() / (n * p))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts.detach().to("cpu", copy=True)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.copy_(state["counts"])
