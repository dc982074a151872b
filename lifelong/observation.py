"""Strategies observe only the batches the learner applied, without waiting for the device per batch.

A stream batch the non-finite guard skipped (:mod:`lifelong.learner`) must not reach ``after_step``:
a memory that stored its samples would replay them, and every batch they joined would be skipped
too; EWC's Fisher over them is NaN, and its true Fisher failed drawing labels from NaN
probabilities (a traceback from one overflowing record). Whether a batch was applied is a flag on
the device, so when the hook may run depends on the device:

- **CPU**: the flag is known when the step returns; the hook runs at once, for applied batches only.
- **CUDA**: each step's flag is copied to pinned host memory without blocking, and an event is
  recorded after the copy. A step's hook runs once its event has passed, or when more than
  :data:`LAG` steps wait: the host then waits for that step alone while the later ones keep the
  device busy (bounded run-ahead, not a drain of the queue). A strategy sees a batch up to
  :data:`LAG` steps late; the session calls :meth:`Observations.flush` before anything reads a
  strategy's state (a boundary's consolidation, a checkpoint).
- **Other devices** (MPS): the flag is read at once, which waits for the device.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lifelong.types import Batch

LAG = 2  # CUDA steps a batch may wait for its flag before the host waits for it


@dataclass
class _Pending:
    batch: Batch
    outputs: torch.Tensor
    first_pass: bool
    host: torch.Tensor  # the step's flag, copied to pinned memory
    event: Any  # torch.cuda.Event recorded after the copy


class Observations:
    """Hands ``after_step`` each stream batch the learner applied (see the module docstring)."""

    def __init__(self, hooks: Any, device: torch.device, events: Callable[[], Any] | None = None):
        """``events`` makes the deferred path's events (on CUDA, ``torch.cuda.Event``); given on another
        device, that path runs there too, which is how the tests check it without a GPU."""
        self._hooks = hooks
        self._pending: deque[_Pending] = deque()
        cuda = device.type == "cuda"
        self._deferred = cuda or events is not None
        self._events = events if events is not None else torch.cuda.Event
        # LAG + 1 pinned flags, reused: a slot is written again only after its step was released
        self._flags = [torch.zeros((), pin_memory=cuda) for _ in range(LAG + 1)] if self._deferred else []
        self._next = 0

    def add(self, batch: Batch, outputs: torch.Tensor, first_pass: bool, flag: torch.Tensor) -> None:
        """The step on ``batch`` is done; ``flag`` (a 0-d device tensor, 1: not applied) is its own copy."""
        if not self._deferred:
            if self.applied_on_cpu(flag):
                self._observe(batch, outputs, first_pass)
            return
        host = self._flags[self._next]
        self._next = (self._next + 1) % len(self._flags)
        host.copy_(flag, non_blocking=True)
        event = self._events()
        event.record()
        self._pending.append(_Pending(batch, outputs, first_pass, host, event))
        self._release(LAG)

    @staticmethod
    def applied_on_cpu(flag: torch.Tensor) -> bool:
        """Whether the step was applied, read at once: on the CPU (nothing to wait for) or on a device
        without events (MPS, where this waits for it)."""
        return not flag.item()

    def flush(self) -> None:
        """Release every waiting step (waits for the device on CUDA): before a strategy's state is read."""
        self._release(0)

    def _release(self, keep: int) -> None:
        pending = self._pending
        while pending and (len(pending) > keep or pending[0].event.query()):
            step = pending.popleft()
            step.event.synchronize()
            if not step.host.item():
                self._observe(step.batch, step.outputs, step.first_pass)

    def _observe(self, batch: Batch, outputs: torch.Tensor, first_pass: bool) -> None:
        self._hooks.after_step(batch=batch, outputs=outputs, first_pass=first_pass)
