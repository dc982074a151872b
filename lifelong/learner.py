"""One optimizer update per batch, with the strategies' hooks around it.

The step never synchronises with the device: losses and accuracies stay tensors and are summed on
the device by :class:`lifelong.metrics.RunningMetrics`; the pipeline reads them every
``log_every`` batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lifelong.metrics import RunningMetrics
from lifelong.types import Batch


def forward(model: torch.nn.Module, x: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
    """Logits of ``model``; task-incremental models also take the per-sample task ids."""
    return model(x) if task is None else model(x, task)


def prepare(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the model's frozen ``prepare`` transform when it has one (see ``register_models``)."""
    transform = getattr(model, "prepare", None)
    if transform is None:
        return x
    with torch.no_grad():
        return transform(x)


def parameter_groups(model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
    """The model's own optimizer groups (discriminative learning rates), else one group of every trainable parameter."""
    groups = getattr(model, "param_groups", None)
    if groups is not None:
        return groups(lr)
    return [{"params": [p for p in model.parameters() if p.requires_grad]}]


def build_optimizer(name: str, params: list[Any], lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class Learner:
    """Owns the optimizer step; strategies shape it through the lifecycle hooks."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, hooks: Any, device: torch.device):
        self.model = model
        self.optimizer = optimizer
        self.hooks = hooks
        self.device = device
        self.metrics = RunningMetrics(device)

    def step(self, batch: Batch, prequential: bool = True) -> None:
        """Train on one stream batch (already on the device) plus whatever strategies add to it.

        With ``prequential`` the pre-update predictions on the stream batch count towards the
        test-then-train accuracy (first pass over the stream only).
        """
        hooks = self.hooks
        extras = [b for b in hooks.augment_batch(batch=batch) if b is not None]
        train = Batch.concat([batch, *extras]) if extras else batch
        if not self.model.training:  # train() walks every submodule: only after an evaluation
            self.model.train()
        outputs = forward(self.model, train.x, train.task)
        loss = F.cross_entropy(outputs, train.y)
        total = loss
        for term in hooks.extra_loss(batch=train, outputs=outputs, model=self.model):
            if term is not None:
                total = total + term
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        hooks.before_optimizer_step(model=self.model, optimizer=self.optimizer)
        self.optimizer.step()
        stream_outputs = outputs[: len(batch)].detach()
        hooks.after_step(batch=batch, outputs=stream_outputs, first_pass=prequential)
        if prequential:
            self.metrics.update(loss, stream_outputs, batch.y)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Batch, device: torch.device, batch_size: int) -> float:
    """Accuracy of ``model`` on a held-out set, in chunks; one host read at the end."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = len(data)
    for start in range(0, n, batch_size):
        chunk = Batch(
            x=data.x[start : start + batch_size],
            y=data.y[start : start + batch_size],
            task=None if data.task is None else data.task[start : start + batch_size],
        ).to(device)
        correct += (forward(model, chunk.x, chunk.task).argmax(dim=1) == chunk.y).sum()
    return correct.item() / n if n else float("nan")
