"""Experience replay: a fixed-size memory of past stream samples, mixed into every batch.

Each stream batch is trained together with ``replay_batch`` samples drawn uniformly (with
replacement) from the memory; after the update the stream batch is offered to the memory. The
memory is a set of tensors preallocated on the training device, so storing and sampling are a few
tensor operations per batch with no host–device synchronisation. Replay ignores boundaries, so it
works the same in benchmark and task-free streams; in the task-incremental scenario each sample's
task id is stored and replayed with it.

Policies (what the memory holds once full):

- ``reservoir``: Vitter's algorithm R, as in Chaudhry et al. 2019 ("On Tiny Episodic Memories in
  Continual Learning"): the i-th stream sample (1-based) is stored if i ≤ memory, else it
  overwrites slot j for j drawn uniformly in [0, i) when j < memory. Every sample seen so far is in
  memory with probability memory / seen. Done for a whole batch at once; when two samples of a
  batch draw the same slot the later one wins, exactly as the sequential algorithm.
- ``class-balanced``: the memory is shared out evenly among the classes seen so far (per (task,
  class) in the task scenario) by water-filling: a class with fewer samples than its share keeps
  all of them, the other classes share the rest equally (the few slots left by integer division go
  to those classes at random). Which samples a class keeps is decided by a random priority drawn
  for every sample on arrival: the ones with the smallest priorities. So a new class evicts from the
  largest classes, a random member within each, and each class holds a uniform sample of its own
  stream (up to its one leftover slot). This is the balanced target of class-balanced reservoir
  sampling (Chrysakis & Moens 2020) reached at every batch, and it is order-independent within a
  batch, which is what lets it run as sorts on the device. It costs two sorts over memory + batch
  per batch.

Samples are stored once: repeated passes over a span (``learner.epochs > 1``) are trained on with
replay but not offered to the memory again.

>>> import torch
>>> from types import SimpleNamespace
>>> from lifelong.types import Batch, StreamInfo
>>> replay = Replay(ReplayOptions(memory=10, replay_batch=4))
>>> replay.on_run_start(SimpleNamespace(info=StreamInfo((3,), 2), device=torch.device("cpu"), seed=0))
>>> for _ in range(5):
...     replay.after_step(Batch(x=torch.rand(8, 3), y=torch.randint(2, (8,))), None, first_pass=True)
>>> replay.seen, replay.filled, len(replay.augment_batch(Batch(x=torch.rand(8, 3), y=torch.zeros(8, dtype=torch.long))))
(40, 10, 4)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lifelong import hookimpl
from lifelong.types import Batch

log = logging.getLogger(__name__)
PRIORITY = 2**31  # class-balanced priorities are integers in [0, PRIORITY), sortable with the class key


class Buffer:
    """Sample storage preallocated on a device: ``x``, ``y`` and per-sample ``task`` ids.

    One extra scratch row at index ``capacity`` takes the writes of samples that are not stored, so
    a batch is written with one ``index_copy_`` whatever the policy decided, with no masking (a
    boolean mask would need the count of selected rows on the host).

    ``x`` is allocated at the first write, in the shape and dtype of what arrives: the stream's
    samples, or a frozen backbone's features when the model prepares its inputs (see
    ``register_models``), or token ids.
    """

    def __init__(self, capacity: int, device: torch.device, tasks: bool):
        self.capacity = capacity
        self.device = device
        self.x: torch.Tensor | None = None
        self.y = torch.zeros(capacity + 1, dtype=torch.long, device=device)
        self.task = torch.zeros(capacity + 1, dtype=torch.long, device=device) if tasks else None

    def _allocate(self, like: torch.Tensor) -> None:
        if self.x is None:
            self.x = torch.zeros((self.capacity + 1, *like.shape[1:]), dtype=like.dtype, device=self.device)

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in (self.x, self.y, self.task) if t is not None)

    def write(self, slots: torch.Tensor, batch: Batch, rows: torch.Tensor | None = None) -> None:
        """Store ``batch`` (or its ``rows``) at ``slots``; slot ``capacity`` is the scratch row."""
        x, y, task = batch.x, batch.y, batch.task
        if rows is not None:
            x, y = x.index_select(0, rows), y.index_select(0, rows)
            task = None if task is None else task.index_select(0, rows)
        self._allocate(x)
        self.x.index_copy_(0, slots, x.to(self.x.dtype))
        self.y.index_copy_(0, slots, y)
        if self.task is not None:
            self.task.index_copy_(0, slots, task if task is not None else torch.zeros_like(y))

    def gather(self, index: torch.Tensor) -> Batch:
        # index_select, not x[index]: advanced indexing costs several times more per call on CPU
        task = None if self.task is None else self.task.index_select(0, index)
        return Batch(x=self.x.index_select(0, index), y=self.y.index_select(0, index), task=task, source="replay")

    def grow(self, capacity: int, keep: int) -> None:
        """Reallocate with room for ``capacity`` samples, keeping the first ``keep`` (joint's memory grows)."""
        old = (self.x, self.y, self.task)
        self.__init__(capacity, self.device, self.task is not None)
        if old[0] is not None:
            self._allocate(old[0])
        for new, tensor in zip((self.x, self.y, self.task), old):
            if new is not None:
                new[:keep] = tensor[:keep]

    def state(self, n: int) -> dict[str, torch.Tensor]:
        state = {"x": self.x[:n] if self.x is not None else torch.zeros(0), "y": self.y[:n]}
        if self.task is not None:
            state["task"] = self.task[:n]
        return state

    def load(self, state: dict[str, Any]) -> int:
        """Copy a saved ``state`` in; returns how many samples it held."""
        n = int(state["y"].shape[0])
        if n > self.capacity:
            raise ValueError(f"the saved memory holds {n} samples, more than memory={self.capacity}")
        if n == 0:
            return 0
        # The stream's later samples must match the saved ones in shape; a mismatch fails at the write.
        self._allocate(state["x"])
        self.x[:n] = state["x"]
        self.y[:n] = state["y"]
        if self.task is not None and "task" in state:
            self.task[:n] = state["task"]
        return n


@dataclass
class ReplayOptions:
    memory: int = field(default=200, metadata={"help": "samples kept in memory (preallocated on the training device)"})
    replay_batch: int = field(
        default=32, metadata={"help": "memory samples mixed into each batch; 0: as many as the stream batch"}
    )
    policy: Literal["reservoir", "class-balanced"] = field(
        default="reservoir",
        metadata={"help": "reservoir (uniform over the stream) or class-balanced (even share per class seen)"},
    )

    def check(self) -> None:
        if self.memory < 1:
            raise ValueError(f"memory must be at least 1, got {self.memory}")
        if self.replay_batch < 0:
            raise ValueError(f"replay_batch must be 0 or more, got {self.replay_batch}")


class Replay:
    """Experience replay with a fixed-size memory; see the module docstring for the policies."""

    def __init__(self, options: ReplayOptions):
        self.options = options
        self.size = options.memory
        self.seen = 0  # stream samples offered to the memory (a host int: batch sizes are known on the host)
        self.buffer: Buffer | None = None
        self._pending: dict[str, Any] | None = None  # state loaded before the run started

    @property
    def filled(self) -> int:
        return min(self.seen, self.size)

    @hookimpl
    def on_run_start(self, run) -> None:
        info = run.info
        self.device = run.device
        self.buffer = Buffer(self.size, run.device, tasks=info.scenario == "task")
        # Class keys are (task, class) pairs in the task scenario, where labels are local to a head.
        self.num_classes = info.num_classes
        self.num_keys = info.num_classes * max(info.num_tasks, 1)
        # class-balanced: each stored sample's random priority (see the module docstring)
        self.priority = torch.zeros(self.size + 1 if self._balanced else 0, dtype=torch.long, device=run.device)
        self.generator = torch.Generator(device=run.device).manual_seed(run.seed + 7919)
        if self._pending is not None:
            self.load_state_dict(self._pending)
            self._pending = None
        log.info("replay: %s memory of %d samples on %s", self.options.policy, self.size, run.device)

    @property
    def memory_bytes(self) -> int:
        """Bytes the memory holds on the device (samples are allocated with the first batch)."""
        return self.buffer.nbytes + self.priority.nbytes if self.buffer is not None else 0

    @property
    def _balanced(self) -> bool:
        return self.options.policy == "class-balanced"

    @hookimpl
    def augment_batch(self, batch: Batch) -> Batch | None:
        filled = self.filled
        if filled == 0:
            return None
        k = min(self.options.replay_batch or len(batch), filled)
        index = torch.randint(filled, (k,), generator=self.generator, device=self.device)
        return self.buffer.gather(index)

    @hookimpl
    def after_step(self, batch: Batch, outputs, first_pass: bool) -> None:
        if not first_pass:
            return
        n = len(batch)
        if self.seen + n <= self.size:  # still filling: every sample is kept, in order
            self.buffer.write(torch.arange(self.seen, self.seen + n, device=self.device), batch)
            if self._balanced:
                self.priority[self.seen : self.seen + n] = self._priorities(n)
        elif self._balanced:
            self._insert_balanced(batch)
        else:
            self.buffer.write(self._reservoir_slots(n), batch)
        self.seen += n

    # -- reservoir (algorithm R) ------------------------------------------------------------------
    def _reservoir_slots(self, n: int) -> torch.Tensor:
        """The slot of each sample of the batch, or the scratch row ``size`` when not stored."""
        size, device = self.size, self.device
        position = torch.arange(self.seen, self.seen + n, device=device)  # 0-based index in the stream
        # uniform in [0, position]: a 62-bit draw modulo position + 1 (bias < position / 2**62)
        draw = torch.randint(2**62, (n,), generator=self.generator, device=device) % (position + 1)
        slot = torch.where(position < size, position, draw)
        slot = torch.where(slot < size, slot, size)
        # Several samples may draw one slot; sequentially the last would overwrite the others.
        order = torch.arange(n, device=device)
        last = torch.full((size + 1,), -1, dtype=torch.long, device=device).scatter_reduce_(0, slot, order, "amax")
        return torch.where(last.index_select(0, slot) == order, slot, size)

    # -- class-balanced ---------------------------------------------------------------------------
    def _keys(self, y: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        return y if task is None else task * self.num_classes + y

    def _priorities(self, n: int) -> torch.Tensor:
        return torch.randint(PRIORITY, (n,), generator=self.generator, device=self.device)

    def _insert_balanced(self, batch: Batch) -> None:
        size, n, device, buf = self.size, len(batch), self.device, self.buffer
        # candidates: the memory's slots (empty ones in a class of their own, K) and the batch
        keys = torch.cat([self._keys(buf.y[:size], None if buf.task is None else buf.task[:size]),
                          self._keys(batch.y, batch.task)])
        keys[self.filled : size] = self.num_keys
        priority = torch.cat([self.priority[:size], self._priorities(n)])
        # rank of every candidate within its class, smallest priority first (one sort on both keys)
        order = torch.argsort(keys * PRIORITY + priority)
        counts = torch.bincount(keys, minlength=self.num_keys + 1)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(keys)
        rank[order] = torch.arange(len(keys), device=device) - first.index_select(0, keys.index_select(0, order))
        level, leftover = water_level(counts[: self.num_keys], size)
        real = keys < self.num_keys
        keep = real & (rank < level)
        # the leftover slots: one more sample for that many capped classes, chosen at random (by
        # the priority of each one's next candidate)
        next_in_line = real & (rank == level)
        contest = torch.argsort(torch.where(next_in_line, priority, PRIORITY))
        place = torch.empty_like(contest)
        place[contest] = torch.arange(len(keys), device=device)
        keep |= next_in_line & (place < leftover)
        # Pair the batch samples kept with the memory slots freed (evicted ones first, then empty
        # ones in order, so that the filled slots stay the prefix [0, filled)).
        freed = torch.argsort(keep[:size].to(torch.uint8), stable=True)
        if n > size:
            freed = torch.cat([freed, freed.new_full((n - size,), size)])
        stored = torch.argsort((~keep[size:]).to(torch.uint8), stable=True)
        slots = torch.where(torch.arange(n, device=device) < keep[size:].sum(), freed[:n], size)
        buf.write(slots, batch, rows=stored)
        self.priority.index_copy_(0, slots, priority[size:].index_select(0, stored))

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.buffer is None:
            return dict(self._pending or {})
        state: dict[str, Any] = {
            "memory": self.buffer.state(self.filled),
            "seen": self.seen,
            "policy": self.options.policy,
            "memory_bytes": self.memory_bytes,
            "rng": self.generator.get_state(),
        }
        if self._balanced:
            state["priority"] = self.priority[: self.filled]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.buffer is None:  # before the run: the buffer is allocated on the device at start
            self._pending = state
            return
        n = self.buffer.load(state["memory"])
        self.seen = int(state["seen"])
        if n != self.filled:
            raise ValueError(f"the saved memory holds {n} samples but {self.seen} were seen (memory={self.size})")
        if self._balanced:
            if "priority" in state:
                self.priority[:n] = state["priority"]
            else:  # a reservoir memory continued class-balanced: fresh random priorities
                self.priority[:n] = self._priorities(n)
        if "rng" in state:
            self.generator.set_state(state["rng"])


def water_level(counts: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Share ``total`` slots among classes holding ``counts`` candidates, as evenly as possible.

    Returns (level, leftover): each class keeps min(count, level) candidates and ``leftover`` of the
    classes with more than ``level`` keep one more. Greedy over the classes in ascending count: a
    class that fits in an equal share of what is left keeps everything. All device tensors.

    >>> water_level(torch.tensor([50, 500, 1000]), 300)
    (tensor(125), tensor(0))
    >>> water_level(torch.tensor([3, 4, 5]), 10)
    (tensor(3), tensor(1))
    """
    ordered, _ = torch.sort(counts)
    before = torch.cumsum(ordered, 0) - ordered  # candidates in the smaller classes
    classes_left = torch.arange(len(ordered), 0, -1, device=counts.device)
    share = (total - before).clamp(min=0) // classes_left
    short = ordered > share  # this class (and every larger one) cannot keep all it has
    # the first short class; index_select, since indexing by a 0-d tensor reads it on the host
    j = torch.argmax(short.to(torch.uint8)).unsqueeze(0)
    share, before, classes_left = (t.index_select(0, j)[0] for t in (share, before, classes_left))
    capped = short.any()
    level = torch.where(capped, share, torch.iinfo(torch.long).max // 2)
    leftover = torch.where(capped, total - before - share * classes_left, 0)
    return level, leftover
