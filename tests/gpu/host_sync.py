"""Two ways of catching a host–device synchronisation in the per-batch path of a run.

- :func:`cuda_sync_check`: PyTorch's own check, ``torch.cuda.set_sync_debug_mode("error")``: every
  operation that makes the host wait for a CUDA device (``.item()``, ``bool(tensor)``, a blocking
  copy, ``nonzero``, ``bincount``'s size read, boolean-mask indexing …) raises a RuntimeError at
  the line that did it. The mode is process-wide (not per thread). It needs CUDA.
- :class:`SyncProneOps`: a CPU stand-in, so the same paths are checked where there is no GPU. A
  ``TorchDispatchMode`` (thread-local: the reader thread is not watched) records every ATen
  operation that synchronises when its tensors live on CUDA: ``_local_scalar_dense`` (``item``,
  ``int()``, ``bool()``, a tensor in an ``if``), ``nonzero``, ``masked_select``, ``bincount``,
  ``unique``, ``repeat_interleave`` of a tensor without ``output_size``, indexing with a boolean
  mask, ``multinomial`` of one sample or without replacement (it validates the probabilities on the
  host) … It cannot see what never dispatches on the CPU (``tolist()``, ``numpy()``, ``.cpu()`` of a
  CPU tensor), which is what the CUDA check adds.

:class:`Region` decides where a check applies: on for the whole run, off inside the session's
methods that read the device by design (the ``log_every`` reads, boundaries with their evaluation,
checkpoints, the summary) and during the first ``warmup`` stream batches (one-time lazy set-up is
not a per-batch cost).
"""

from __future__ import annotations

import functools
import traceback
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Session methods that synchronise by design: evaluation, boundaries, the log_every reads, checkpoints, the end.
ALLOWED = ("_open", "_boundary", "_log", "_write_checkpoint", "_summary", "_close")
WARMUP = 2  # stream batches trained before the check starts

_aten = torch.ops.aten
# Operations that read a device value on the host (their result's size or a scalar).
ALWAYS = {
    _aten._local_scalar_dense.default,
    _aten.is_nonzero.default,
    _aten.equal.default,
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten.bincount.default,
    _aten._unique.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
    _aten.histc.default,
}


def _sync_prone(func: Any, args: tuple, kwargs: dict) -> str | None:
    """Why ``func(*args, **kwargs)`` would synchronise on CUDA, or None."""
    if func in ALWAYS:
        return str(func)
    name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else ""
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices or ()):
            return f"{func} with a boolean mask"
    if func is _aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
        return f"{func} without output_size"
    if func is _aten.repeat_interleave.self_Tensor and kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None):
        return f"{func} without output_size"
    if name == "multinomial":
        n = args[1] if len(args) > 1 else kwargs.get("num_samples")
        replacement = args[2] if len(args) > 2 else kwargs.get("replacement", False)
        if n == 1 or not replacement:
            return f"{func} (one sample, or without replacement: its probabilities are checked on the host)"
    if name in ("_to_copy", "copy_") and _crosses_to_host(func, args, kwargs):
        return f"{func} to the host"
    return None


def _crosses_to_host(func: Any, args: tuple, kwargs: dict) -> bool:
    if func.overloadpacket.__name__ == "_to_copy":
        device = kwargs.get("device")
        return device is not None and torch.device(device).type == "cpu" and args[0].device.type != "cpu"
    return len(args) > 1 and args[0].device.type == "cpu" and args[1].device.type != "cpu"


class SyncProneOps(TorchDispatchMode):
    """Records every ATen call that would synchronise on CUDA while ``active`` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.active:
            why = _sync_prone(func, args, kwargs)
            if why is not None:
                frames = [f for f in traceback.extract_stack()[:-1] if "torch/" not in f.filename and "host_sync" not in f.filename]
                where = " <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}" for f in frames[-4:][::-1])
                self.found.append(f"{why} at {where}")
        return func(*args, **kwargs)


class Region:
    """Switches a check on for a run's per-batch path and off inside the ``allowed`` methods of ``runner``.

    ``on()`` and ``off()`` are the check's switches; the check starts once ``warmup`` calls of
    ``runner.learner.step`` returned. Wrapping instance attributes leaves the classes untouched.
    """

    def __init__(self, runner: Any, on: Callable[[], None], off: Callable[[], None], warmup: int = WARMUP, allowed=ALLOWED):
        self._on, self._off = on, off
        self.depth = 0  # nesting of allowed calls
        self.steps = 0
        self.checked_steps = 0  # stream or epoch steps run with the check on
        self.warmup = warmup
        for name in allowed:
            setattr(runner, name, self._allowed(getattr(runner, name)))
        step = runner.learner.step

        @functools.wraps(step)
        def counted(*args, **kwargs):
            if self.armed and self.depth == 0:
                self.checked_steps += 1
            result = step(*args, **kwargs)
            self.steps += 1
            if self.steps == self.warmup and self.depth == 0:
                self._on()
            return result

        runner.learner.step = counted
        if warmup == 0:
            self._on()

    @property
    def armed(self) -> bool:
        return self.steps >= self.warmup

    def _allowed(self, method: Callable) -> Callable:
        @functools.wraps(method)
        def call(*args, **kwargs):
            self.depth += 1
            if self.depth == 1:
                self._off()
            try:
                return method(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0 and self.armed:
                    self._on()

        return call

    def close(self) -> None:
        self._off()


def cuda_sync_check(runner: Any, warmup: int = WARMUP) -> Region:
    """PyTorch's sync debug mode "error" over ``runner``'s per-batch path; ``close()`` turns it off."""
    return Region(runner, lambda: torch.cuda.set_sync_debug_mode("error"), lambda: torch.cuda.set_sync_debug_mode(0), warmup)


def dispatch_sync_check(runner: Any, mode: SyncProneOps, warmup: int = WARMUP) -> Region:
    """``mode`` (entered by the caller around the run) recording over ``runner``'s per-batch path.

    One CPU-only read is allowed: on the CPU, :class:`lifelong.observation.Observations` reads each
    step's applied flag, a CPU value computed by then; on CUDA that branch is not taken (the flag goes
    to pinned memory without blocking and is read once an event has passed), and
    :func:`cuda_sync_check` watches that path instead.
    """
    region = Region(runner, lambda: setattr(mode, "active", True), lambda: setattr(mode, "active", False), warmup)
    observations = runner.learner.observations
    if observations is not None:
        observations.applied_on_cpu = region._allowed(observations.applied_on_cpu)
    return region
