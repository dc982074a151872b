"""What a model learns and how it is judged: classification (labels, accuracy) or detection (no
labels, ROC-AUC of an anomaly score).

The model decides. A model component whose module has ``anomaly_score`` is an **anomaly
detector** (see ``register_models``): it defines its own per-sample training loss from the batch
(``sample_loss(x, outputs)``, a reconstruction error), its anomaly score
(``anomaly_score(x, outputs)``, higher is more anomalous), optionally the weights of the samples
it lets into the update (``sample_weights(x, scores)``: 0 keeps a sample out of the loss and out
of every memory: a contamination filter, a calibration hold-out) and a ``threshold`` buffer (flag = score > threshold;
:data:`NOT_CALIBRATED` until it is set, since every buffer of a generation must be finite). Any
other model is a **classifier**: cross-entropy on the labels, accuracy.

Labels are optional in a stream (:attr:`lifelong.types.StreamInfo.labels`): a sample without one
holds :data:`NO_LABEL` in ``Batch.y``, so batches, memories and checkpoints keep one layout. A
detector never trains on labels; where a stream has them (``1`` = anomaly, ``0`` = normal) they
score the pre-update prequential ROC-AUC and the held-out sets. A classifier refuses a stream
without labels.

Strategies stay objective-agnostic through :func:`sample_losses`: EWC's empirical Fisher and
LwF's distillation call it instead of cross-entropy when the model is a detector.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lifelong import ranking
from lifelong.types import Batch

NO_LABEL = -1  # Batch.y of a sample without a label (see StreamInfo.labels)
# A detector's threshold before its first calibration: it flags nothing. Finite, because a generation's
# weights and buffers must all be finite (lifelong.session); reported as None.
NOT_CALIBRATED = float(torch.finfo(torch.float32).max)


def calibrated(threshold: float) -> float | None:
    """``threshold`` as reported (summary, served answers): None while it is not calibrated."""
    return threshold if threshold == threshold and threshold < NOT_CALIBRATED else None


def is_detector(model: Any) -> bool:
    """True when ``model`` learns without labels and is judged by an anomaly score (see the module docstring)."""
    return callable(getattr(model, "anomaly_score", None))


def forward(model: torch.nn.Module, x: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
    """Outputs of ``model`` (logits, or a detector's reconstruction); task-incremental models also take the task ids."""
    return model(x) if task is None else model(x, task)


def sample_losses(model: torch.nn.Module, x: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Per-sample training loss: the detector's own, else cross-entropy on ``y``."""
    if is_detector(model):
        return model.sample_loss(x, outputs)
    return F.cross_entropy(outputs, y, reduction="none")


class Classification:
    """Cross-entropy on labels; judged by accuracy."""

    metric = "accuracy"
    metrics = ("accuracy",)

    def loss(self, model: torch.nn.Module, batch: Batch, outputs: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        """The batch's mean loss, per-sample weights (None: all 1) and scores (None: classifiers have none)."""
        return F.cross_entropy(outputs, batch.y), None, None

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, data: Batch, device: torch.device, batch_size: int) -> dict[str, float | None]:
        """Accuracy on a held-out set, in chunks; one host read at the end."""
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for chunk in _chunks(data, device, batch_size):
            correct += (forward(model, chunk.x, chunk.task).argmax(dim=1) == chunk.y).sum()
        n = len(data)
        return {"accuracy": correct.item() / n if n else None}


class Detection:
    """The detector's own loss, weighted by its contamination filter; judged by ROC-AUC and PR-AUC."""

    metric = "roc_auc"
    metrics = ("roc_auc", "pr_auc")

    def loss(self, model: torch.nn.Module, batch: Batch, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        losses = model.sample_loss(batch.x, outputs)
        if getattr(model, "scores_from_loss", False):
            scores = losses.detach()
        else:
            scores = model.anomaly_score(batch.x, outputs.detach()).detach()
        weigh = getattr(model, "sample_weights", None)
        weights = weigh(batch.x, scores) if weigh is not None else None
        if weights is None:
            return losses.mean(), None, scores
        # samples the filter keeps out add nothing and do not dilute the mean of those it keeps
        return (losses * weights).sum() / weights.sum().clamp_min(1.0), weights, scores

    @torch.no_grad()
    def scores(self, model: torch.nn.Module, data: Batch, device: torch.device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly scores (eval mode) and labels of a held-out set, on the host."""
        model.eval()
        out = [model.anomaly_score(chunk.x, forward(model, chunk.x, chunk.task)) for chunk in _chunks(data, device, batch_size)]
        scores = torch.cat(out).float().cpu() if out else torch.zeros(0)
        return scores, data.y.cpu()

    def measure(self, model: torch.nn.Module, data: Batch, device: torch.device, batch_size: int) -> dict[str, float | None]:
        scores, labels = self.scores(model, data, device, batch_size)
        s, y = scores.numpy(), labels.numpy()
        return {"roc_auc": ranking.roc_auc(s, y), "pr_auc": ranking.pr_auc(s, y)}

    def at_threshold(self, model: torch.nn.Module, sets: list[Batch], device: torch.device, batch_size: int) -> dict[str, Any]:
        """The threshold the model holds and its precision, recall, F1 and false-alarm rate on ``sets`` together."""
        threshold = float(model.threshold)
        pairs = [self.scores(model, data, device, batch_size) for data in sets]
        scores = torch.cat([p[0] for p in pairs]).numpy() if pairs else []
        labels = torch.cat([p[1] for p in pairs]).numpy() if pairs else []
        return {"threshold": threshold, **ranking.at_threshold(scores, labels, threshold)}


def objective_of(model: Any) -> Classification | Detection:
    return Detection() if is_detector(model) else Classification()


def _chunks(data: Batch, device: torch.device, batch_size: int):
    for start in range(0, len(data), batch_size):
        yield Batch(
            x=data.x[start : start + batch_size],
            y=data.y[start : start + batch_size],
            task=None if data.task is None else data.task[start : start + batch_size],
        ).to(device)


def kept(batch: Batch) -> Batch:
    """``batch`` as a memory may store it: each sample the contamination filter left out (weight 0)
    replaced by a kept sample of the same batch drawn at random, so a memory never stores it.

    Replacing, rather than dropping, keeps the batch's length known on the host, which is what
    lets memories count and place samples without reading the device. A batch whose every sample
    was left out is returned whole: when everything scores above the threshold at once, the
    stream's notion of normal has most likely moved, and keeping nothing would freeze the memory
    on the old normal. Device-side, no host synchronisation.
    """
    weight = batch.weight
    if weight is None:
        return batch
    kept_mask = weight > 0
    draw = torch.where(kept_mask.any(), kept_mask.float(), torch.ones_like(weight))
    # ≥ 2 draws: torch.multinomial of one sample checks its probabilities on the host (a sync)
    donors = torch.multinomial(draw, max(len(batch), 2), replacement=True)[: len(batch)]
    rows = torch.where(kept_mask, torch.arange(len(batch), device=weight.device), donors)
    return Batch(
        x=batch.x.index_select(0, rows),
        y=batch.y.index_select(0, rows),
        experience=batch.experience,
        task=None if batch.task is None else batch.task.index_select(0, rows),
        source=batch.source,
        start=batch.start,
        stop=batch.stop,
        position=batch.position,
    )
