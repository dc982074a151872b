"""Joint training, the upper bound of benchmarks: retrain on everything seen so far.

The kernel owns the loop, so joint cannot retrain from scratch on the union of the data at each
boundary; it gets the same objective from inside the per-batch loop instead. It keeps every stream
sample (a memory that grows, on the training device) and mixes each stream batch of b samples with
b·E samples of the E completed spans (generations), drawn *without* replacement from a running
permutation of them. When the current span is as large as the mean past span, one epoch over it
is then one epoch over the union of all data seen so far, in batches that mix old and new data in
proportion to their sizes, i.e. minibatch training on the union, with the same number of epochs as
every other strategy (extra epochs at a boundary replay the past again, first-pass only storage
keeps it duplicate-free). Retraining from scratch would need a loop of its own and a reset of the
model and optimizer, which only the kernel owns; cumulative training from the current weights on the
same data is the usual stand-in (Avalanche's ``Cumulative``) and is at least as good.

Why not replay with a huge memory: reservoir sampling with replacement draws a fixed number of
samples per batch whatever the past's size, so the past would be under-trained as it grows; joint
scales the draw with the past and covers each past sample once per epoch. Costs grow with the
stream: memory (every sample, also carried in checkpoints and generations) and compute (batches of
b·(E+1) samples in the E-th span). It is a benchmark reference, not a production strategy.

>>> import torch
>>> from types import SimpleNamespace
>>> from lifelong.types import Batch, StreamInfo
>>> joint = Joint()
>>> joint.on_run_start(SimpleNamespace(info=StreamInfo((3,), 2), device=torch.device("cpu"), seed=0))
>>> batch = Batch(x=torch.rand(8, 3), y=torch.zeros(8, dtype=torch.long))
>>> for _ in range(4):
...     joint.after_step(batch, None, first_pass=True)
>>> joint.augment_batch(batch) is None  # nothing from a completed span yet
True
>>> joint.on_boundary(None, None)
>>> len(joint.augment_batch(batch)), joint.stored
(8, 32)
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lifelong import hookimpl
from lifelong.objective import kept
from lifelong.types import Batch
from lifelong_strategies.replay import Buffer

log = logging.getLogger(__name__)


class Joint:
    """Replays every sample of the completed spans once per epoch over the current one."""

    data_parallel = "each rank stores and replays its own share of the stream"

    def __init__(self, options=None):
        self.buffer: Buffer | None = None
        self.stored = 0  # samples in the buffer, the current span's included
        self.past = 0  # samples of completed spans: the prefix [0, past) that is replayed
        self.spans = 0
        self._order: torch.Tensor | None = None  # permutation of the past being drawn from
        self._cursor = 0
        self._pending: dict[str, Any] | None = None

    @property
    def memory_bytes(self) -> int:
        return self.buffer.nbytes if self.buffer is not None else 0

    @hookimpl
    def on_run_start(self, run) -> None:
        info = run.info
        self.device = run.device
        self.buffer = Buffer(1024, run.device, tasks=info.scenario == "task")
        self.generator = torch.Generator(device=run.device).manual_seed(run.seed + 7919)
        if self._pending is not None:
            self.load_state_dict(self._pending)
            self._pending = None

    @hookimpl
    def augment_batch(self, batch: Batch) -> Batch | None:
        if self.past == 0:
            return None
        return self.buffer.gather(self._draw(len(batch) * self.spans))

    def _draw(self, k: int) -> torch.Tensor:
        pieces = []
        while k > 0:
            if self._order is None or self._cursor == len(self._order):
                self._order = torch.randperm(self.past, generator=self.generator, device=self.device)
                self._cursor = 0
            take = min(k, len(self._order) - self._cursor)
            pieces.append(self._order[self._cursor : self._cursor + take])
            self._cursor += take
            k -= take
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    @hookimpl
    def after_step(self, batch: Batch, outputs, first_pass: bool) -> None:
        if not first_pass:  # extra epochs: the samples are stored already
            return
        batch = kept(batch)  # an anomaly detector's contamination filter: what it left out is never stored
        n = len(batch)
        if self.stored + n > self.buffer.capacity:  # grow by doubling: amortised O(1) per sample
            self.buffer.grow(max(2 * self.buffer.capacity, self.stored + n), keep=self.stored)
            log.info("joint: memory grown to %d samples, %.2f MiB", self.buffer.capacity, self.memory_bytes / 2**20)
        self.buffer.write(torch.arange(self.stored, self.stored + n, device=self.device), batch)
        self.stored += n

    @hookimpl
    def on_boundary(self, experience, model) -> None:
        self.past = self.stored
        self.spans += 1
        self._order = None

    def state_dict(self) -> dict[str, Any]:
        if self.buffer is None:
            return dict(self._pending or {})
        return {
            "memory": self.buffer.state(self.stored),
            "past": self.past,
            "spans": self.spans,
            "memory_bytes": self.memory_bytes,
            "rng": self.generator.get_state(),
            # where the current pass over the past samples stands (a mid-span checkpoint resumes it)
            **({} if self._order is None else {"order": self._order, "cursor": self._cursor}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.buffer is None:
            self._pending = state
            return
        n = int(state["memory"]["y"].shape[0])
        if n > self.buffer.capacity:
            self.buffer.grow(n, keep=0)
        self.stored = self.buffer.load(state["memory"])
        self.past, self.spans = int(state["past"]), int(state["spans"])
        self._order = state["order"].to(self.device) if "order" in state else None
        self._cursor = int(state.get("cursor", 0))
        if "rng" in state:
            self.generator.set_state(state["rng"])
