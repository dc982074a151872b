"""One optimizer update per batch, with the strategies' hooks around it.

The step never synchronises with the device: losses and accuracies stay tensors and are summed on
the device by :class:`lifelong.metrics.RunningMetrics`; the pipeline reads them every
``log_every`` batches.

**The non-finite guard.** A batch whose loss or gradients are not finite (an overflow, a poisoned
record, a diverging learning rate) is never applied, and the host does not wait to find out: the
gradients are checked on the device with the kernel AMP's GradScaler uses
(``torch._amp_foreach_non_finite_check_and_unscale_``, with a scale of 1), and the flag goes to
the optimizer, which is built *fused* (one kernel for every parameter): a fused Adam, AdamW or SGD
reads ``found_inf`` on the device and leaves parameters, moments and step counts untouched when it
is set. The flags are read with the running metrics (:class:`lifelong.metrics.RunningMetrics`);
the session lists the skipped batches in the summary and stops a run that keeps diverging. Where
a fused optimizer is not available (a device without fused kernels) the kernel falls back to the
plain one and says that non-finite batches are only counted, not skipped. Strategies' ``after_step``
sees only the applied batches (:mod:`lifelong.observation`).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import torch

from lifelong.metrics import RunningMetrics
from lifelong.objective import forward, objective_of
from lifelong.observation import Observations
from lifelong.types import Batch

__all__ = ["Learner", "attach_nonfinite_flag", "build_optimizer", "flag_nonfinite", "forward", "parameter_groups", "prepare", "skips_nonfinite"]


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
    """The optimizer, fused when the parameters' device has fused kernels (see the module docstring)."""
    kinds = {"sgd": (torch.optim.SGD, {"momentum": momentum}), "adamw": (torch.optim.AdamW, {}), "adam": (torch.optim.Adam, {})}
    cls, extra = kinds.get(name, kinds["adam"])
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True, **extra)
    except (RuntimeError, ValueError, TypeError):  # no fused kernels for this device or dtype
        return cls(params, lr=lr, weight_decay=weight_decay, **extra)


def flag_nonfinite(optimizer: Any, total: torch.Tensor, found: torch.Tensor, unit: torch.Tensor | None = None) -> torch.Tensor:
    """Set ``found`` (a 0-d float tensor, the fused optimizer's ``found_inf``) to 1 when ``total`` or a
    gradient of ``optimizer``'s parameters is not finite, else 0; on the device, no host read.

    For a strategy that trains outside :meth:`Learner.step` with the learner's optimizer (PathNet
    settling a path at a boundary): the optimizer's ``found_inf`` is the learner's, so it must be set
    for every update, or the last stream batch's flag would decide.
    """
    found.zero_()
    # One kernel checks the loss with the gradients: it only ever sets ``found`` to 1 (the value fused
    # kernels test for), and its "unscale" multiplies by 1, which leaves every value as it was.
    checked = [total.detach().float().reshape(1)]
    checked += [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    unit = torch.ones((), device=found.device) if unit is None else unit
    torch._amp_foreach_non_finite_check_and_unscale_(checked, found, unit)
    return found


def skips_nonfinite(optimizer: Any) -> bool:
    """True when ``optimizer`` honours a device-side ``found_inf`` flag (PyTorch's fused optimizers)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def attach_nonfinite_flag(optimizer: Any, found: torch.Tensor) -> bool:
    """Hand ``optimizer`` the device flag ``found`` (set by :func:`flag_nonfinite`) to read at every
    ``step()``, when it honours one; True when it does, so a flagged update is skipped on the device."""
    if not skips_nonfinite(optimizer):
        return False
    optimizer.found_inf, optimizer.grad_scale = found, None
    return True


def _implemented(hooks: Any, name: str) -> bool:
    """False when ``hooks`` is a pluggy hook relay whose hook ``name`` has no implementation."""
    caller = getattr(hooks, name, None)
    get = getattr(caller, "get_hookimpls", None)
    return caller is not None and (get is None or bool(get()))


class Learner:
    """Owns the optimizer step; strategies shape it through the lifecycle hooks."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, hooks: Any, device: torch.device, precision: str = "fp32"):
        self.model = model
        # bf16: forward, loss and strategy terms under autocast; the backward and the update stay float32
        # (fp32 enters no autocast context at all: entering a disabled one still costs Python work every step)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        self.replicas: torch.nn.Module = model  # what the training forward runs: DistributedDataParallel(model) across ranks
        self.optimizer = optimizer
        self.hooks = hooks
        self.device = device
        # classification (cross-entropy, accuracy) or detection (the model's own loss, ROC-AUC): lifelong.objective
        self.objective = objective_of(model)
        self.metrics = RunningMetrics(device, detector=self.objective.metric != "accuracy")
        # 1.0 when the batch in hand had a non-finite loss or gradient; the fused optimizer reads it.
        self.found_inf = torch.zeros((), device=device)
        self._unit_scale = torch.ones((), device=device)
        self.skips = attach_nonfinite_flag(optimizer, self.found_inf)
        # A per-batch hook no plugin implements is not called: a pluggy call costs microseconds with
        # nobody listening (a tenth of the guard's cost on a small model), and a run's plugins are
        # all registered when its plan is built, before the learner exists.
        self._augments, self._adds_loss, self._edits_gradients, observes = (
            _implemented(hooks, name) for name in ("augment_batch", "extra_loss", "before_optimizer_step", "after_step")
        )
        # after_step sees only the batches that were applied (lifelong.observation)
        self.observations = Observations(hooks, device) if observes else None

    def data_parallel(self, device_ids: list[int] | None) -> None:
        """Train as one replica of a data-parallel job (:mod:`lifelong.distributed`): the forward goes
        through ``DistributedDataParallel``, which broadcasts rank 0's weights now and all-reduces the
        gradients of every backward. Called once the strategies have frozen what they freeze."""
        from torch.nn.parallel import DistributedDataParallel

        # gradients as views into DDP's buckets: no copy of every gradient in and out of them per step
        self.replicas = DistributedDataParallel(self.model, device_ids=device_ids, gradient_as_bucket_view=True)

    def single(self) -> None:
        """Drop the data-parallel wrapper (before the process group goes): DDP's reducer holds work objects
        of the group's threads, and freeing them at interpreter exit instead aborts the process."""
        if self.replicas is not self.model:
            self.replicas = self.model
            gc.collect()

    def step(self, batch: Batch, prequential: bool = True, scale: float = 1.0) -> None:
        """Train on one stream batch (already on the device) plus whatever strategies add to it.

        With ``prequential`` the pre-update predictions on the stream batch count towards the
        test-then-train accuracy (first pass over the stream only). ``scale`` multiplies the loss:
        a data-parallel rank's share of the step's samples (:meth:`lifelong.distributed.World.share`).
        """
        hooks = self.hooks
        train = batch
        if self._augments:
            extras = [b for b in hooks.augment_batch(batch=batch) if b is not None]
            train = Batch.concat([batch, *extras]) if extras else batch
        if not self.model.training:  # train() walks every submodule: only after an evaluation
            self.model.train()
        with self.autocast:
            outputs = forward(self.replicas, train.x, train.task)
            loss, weights, scores = self.objective.loss(self.model, train, outputs)
            total = loss
            if self._adds_loss:
                for term in hooks.extra_loss(batch=train, outputs=outputs, model=self.model):
                    if term is not None:
                        total = total + term
        found = self._update(total * scale if scale != 1.0 else total)
        n = len(batch)
        stream_outputs = (outputs if train is batch else outputs[:n]).detach().float()  # float() copies only under bf16
        if weights is not None:
            batch.weight = weights[:n]
        flag = found.clone()  # this step's own: found_inf is the next step's too
        if self.observations is not None:
            self.observations.add(batch, stream_outputs, prequential, flag)
        self.metrics.update(loss.float(), stream_outputs, batch.y, flag, counted=prequential, scores=None if scores is None else scores[:n].float())

    def flush(self) -> None:
        """Hand the strategies every stream batch still waiting for its flag (CUDA; see
        :mod:`lifelong.observation`): before their state is read."""
        if self.observations is not None:
            self.observations.flush()

    def shadow(self, batch: Batch) -> None:
        """A data-parallel rank's step without samples (``batch`` is empty): a backward of zero through
        the replicated forward, so the gradient all-reduce has every rank, then the same update as
        the others. In eval mode, so no running statistic sees the empty batch; no strategy hook
        sees it, and it counts nowhere."""
        self.model.eval()
        outputs = forward(self.replicas, batch.x, batch.task)
        self.model.train()
        self._update(outputs.sum() * 0.0)

    def _update(self, total: torch.Tensor) -> torch.Tensor:
        """Backward of ``total``, the strategies' gradient hook, the non-finite check and the optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self._edits_gradients:
            self.hooks.before_optimizer_step(model=self.model, optimizer=self.optimizer)
        found = self._check_finite(total)
        self.optimizer.step()  # a fused optimizer skips the update on the device when ``found`` is set
        return found

    def _check_finite(self, total: torch.Tensor) -> torch.Tensor:
        """Set ``found_inf`` on the device when the loss or a gradient is not finite; no host sync."""
        return flag_nonfinite(self.optimizer, total, self.found_inf, self._unit_scale)
