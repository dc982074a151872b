"""L2 anchor: ``(λ/2)·‖θ − θ*‖²`` towards the weights of the last consolidation ("keep the parameters close").

The plain, importance-free cousin of EWC: every weight is pulled back equally. It shares EWC's
penalty code (:mod:`.anchors`): fused foreach ops per batch, state keyed by parameter name, and
parameters that appear after a consolidation are free until the next one.

>>> import torch
>>> from lifelong_strategies.l2 import L2, L2Options
>>> model = torch.nn.Linear(2, 1)
>>> strategy = L2(L2Options(lambda_=0.5))
>>> strategy.on_boundary(model)
>>> with torch.no_grad():
...     _ = model.weight.add_(1.0)
>>> round(strategy.extra_loss().item(), 4)  # (0.5/2)·(1² + 1²)
0.5
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lifelong import hookimpl
from lifelong_strategies.anchors import QuadraticAnchor


@dataclass
class L2Options:
    lambda_: float = field(default=0.03, metadata={"key": "lambda", "help": "penalty strength λ in (λ/2)·‖θ − θ*‖²"})

    def check(self) -> None:
        if self.lambda_ < 0:
            raise ValueError(f"lambda must not be negative, got {self.lambda_}")


class L2:
    """Anchors at every boundary; pays ``(λ/2)·‖θ − θ*‖²`` on every batch after the first boundary."""

    data_parallel = "the anchors are the replicated weights: nothing to combine"

    def __init__(self, options: L2Options | None = None):
        self.options = options or L2Options()
        self.penalty = QuadraticAnchor()
        self.model: torch.nn.Module | None = None

    @hookimpl
    def on_run_start(self, run) -> None:
        self.model = run.model
        self.penalty.bind(run.model)

    @hookimpl
    def extra_loss(self) -> torch.Tensor | None:
        return self.penalty.penalty(self.options.lambda_) if self.options.lambda_ else None

    @hookimpl
    def on_boundary(self, model: torch.nn.Module) -> None:
        self.penalty.set(model)

    def state_dict(self) -> dict[str, Any]:
        return self.penalty.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.penalty.load_state_dict(state)
        if self.model is not None:
            self.penalty.bind(self.model)
