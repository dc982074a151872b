"""Experience replay: a fixed-size memory of past stream samples, mixed into every batch.

Each stream batch is trained together with ``replay_batch`` samples drawn uniformly (with
replacement) from the memory; after the update the stream batch is offered to the memory. The
memory is a set of tensors preallocated on the training device, so storing and sampling are a few
tensor operations per batch with no host–device synchronisation. In the task-incremental scenario
each sample's task id is stored and replayed with it.

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

Fills (when the memory takes the stream's samples):

- ``experience-end`` (default): the current experience is offered to a second, staging memory of
  the same size and policy (the same per-batch cost, twice the memory), which is folded into the
  replayed memory at the experience's end (``on_boundary``, at every boundary, detected ones
  included). The replayed memory therefore holds past experiences only, as Avalanche's
  ``ReplayPlugin`` (which fills at experience end, experience-balanced), so every replayed sample
  rehearses the past; nothing is replayed during the first experience (nor in a stream that never
  has a boundary). The fold is exact: the memory ends up with the law it would have had with every
  sample offered to it directly (reservoir: a uniform sample of everything seen, by drawing how
  many of the experience's samples it keeps from the hypergeometric law; class-balanced: the
  water-filled smallest priorities of every class). It reads the host once per boundary, never per
  batch. Measured better than ``stream`` in class-incremental Split-FMNIST and Split-Digits (see
  docs/benchmarks.md).
- ``stream``: each stream batch is offered to the memory right after its update, so the memory
  also holds the current experience (about 1/k of it by the end of the k-th of equal experiences)
  and part of every replayed minibatch is current data. Replay starts at the second batch and needs
  no boundary, so it works the same in benchmark and task-free streams.

With an anomaly detector's contamination filter on, a sample it left out of the update (weight 0)
is never stored: :func:`lifelong.objective.kept` replaces it by a kept sample of the same batch
before the batch is offered, so the memory's counts stay host-side.

Samples are stored once: repeated passes over a span (``learner.epochs > 1``) are trained on with
replay but not offered to the memory again.

>>> import torch
>>> from types import SimpleNamespace
>>> from lifelong.types import Batch, StreamInfo
>>> replay = Replay(ReplayOptions(memory=10, replay_batch=4))
>>> replay.on_run_start(SimpleNamespace(info=StreamInfo((3,), 2), device=torch.device("cpu"), seed=0))
>>> batch = Batch(x=torch.rand(8, 3), y=torch.zeros(8, dtype=torch.long))
>>> for _ in range(5):
...     replay.after_step(Batch(x=torch.rand(8, 3), y=torch.randint(2, (8,))), None, first_pass=True)
>>> replay.stage_seen, replay.filled, replay.augment_batch(batch) is None  # the first experience is staged
(40, 0, True)
>>> replay.on_boundary()
>>> replay.seen, replay.filled, len(replay.augment_batch(batch))
(40, 10, 4)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from lifelong import hookimpl, resources
from lifelong.objective import is_detector, kept
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
    fill: Literal["experience-end", "stream"] = field(
        default="experience-end",
        metadata={
            "help": "experience-end: the current experience is kept apart and joins the memory at its end, so only "
            "past experiences are replayed (as Avalanche's ReplayPlugin); stream: each batch joins the memory as it "
            "comes, so the current experience is replayed too (and replay needs no boundary)"
        },
    )

    def check(self) -> None:
        if self.memory < 1:
            raise ValueError(f"memory must be at least 1, got {self.memory}")
        if self.replay_batch < 0:
            raise ValueError(f"replay_batch must be 0 or more, got {self.replay_batch}")


class Replay:
    """Experience replay with a fixed-size memory; see the module docstring for the policies and fills."""

    data_parallel = "each rank keeps its own memory of its own share of the stream"

    def __init__(self, options: ReplayOptions):
        self.options = options
        self.size = options.memory
        self.seen = 0  # stream samples offered to the memory (a host int: batch sizes are known on the host)
        self.buffer: Buffer | None = None
        # fill = "experience-end": the current experience's own memory, merged into ``buffer`` at its end
        self.stage: Buffer | None = None
        self.stage_seen = 0
        self._pending: dict[str, Any] | None = None  # state loaded before the run started

    @property
    def filled(self) -> int:
        """Samples the replayed memory holds (the prefix ``[0, filled)`` of ``buffer``)."""
        return min(self.seen, self.size)

    @property
    def staged(self) -> int:
        """Samples of the current experience waiting for its end (``fill = "experience-end"``)."""
        return min(self.stage_seen, self.size)

    def memory_estimate(self, info) -> int:
        """Bytes the memory (and the staging memory) will take for samples of ``info.input_shape``.

        Samples are counted as float32 inputs; a model whose ``prepare`` makes features stores those
        instead, so this is an estimate.
        """
        per_sample = resources.elements(info.input_shape) * resources.FLOAT_BYTES + 8 + (8 if info.scenario == "task" else 0)
        per_sample += 8 if self._balanced else 0
        return (2 if self._at_end else 1) * (self.size + 1) * per_sample

    @hookimpl
    def validate(self, run) -> None:
        """The memory is preallocated at the run's start: it must fit on the device. Class-balanced
        needs labels: an anomaly detector's stream has none to balance."""
        if self._balanced and (is_detector(run.model) or not run.info.labels):
            raise ValueError(
                "strategy.replay.policy = 'class-balanced' shares the memory among classes, and this stream's "
                "samples carry no class labels (an anomaly detector, or a stream without labels): use 'reservoir'"
            )
        resources.require(
            self.memory_estimate(run.info),
            f"a replay memory of {self.size:,} samples of shape {tuple(run.info.input_shape)}"
            + (" (and its staging memory, fill = 'experience-end')" if self._at_end else ""),
            "strategy.replay.memory",
            run.device,
        )

    @hookimpl
    def on_run_start(self, run) -> None:
        info = run.info
        self.device = run.device
        tasks = info.scenario == "task"
        self.buffer = Buffer(self.size, run.device, tasks=tasks)
        # Class keys are (task, class) pairs in the task scenario, where labels are local to a head.
        self.num_classes = info.num_classes
        self.num_keys = info.num_classes * max(info.num_tasks, 1)
        # class-balanced: each stored sample's random priority (see the module docstring)
        self.priority = self._new_priority()
        self._counts: torch.Tensor | None = None  # class-balanced: candidates per class key (see _count)
        self._ones: torch.Tensor | None = None
        if self._at_end:
            self.stage = Buffer(self.size, run.device, tasks=tasks)
            self.stage_priority = self._new_priority()
        self.generator = torch.Generator(device=run.device).manual_seed(run.seed + 7919)
        if self._pending is not None:
            self.load_state_dict(self._pending)
            self._pending = None
        log.info("replay: %s memory of %d samples on %s, filled %s", self.options.policy, self.size, run.device,
                 "at experience end" if self._at_end else "from the stream")

    def _new_priority(self) -> torch.Tensor:
        return torch.zeros(self.size + 1 if self._balanced else 0, dtype=torch.long, device=self.device)

    @property
    def memory_bytes(self) -> int:
        """Bytes the memory and the staging memory hold on the device (samples are allocated with the first batch)."""
        if self.buffer is None:
            return 0
        total = self.buffer.nbytes + self.priority.nbytes
        if self.stage is not None:
            total += self.stage.nbytes + self.stage_priority.nbytes
        return total

    @property
    def _balanced(self) -> bool:
        return self.options.policy == "class-balanced"

    @property
    def _at_end(self) -> bool:
        return self.options.fill == "experience-end"

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
        batch = kept(batch)  # an anomaly detector's contamination filter: what it left out is never stored
        if self._at_end:
            self._offer(self.stage, self.stage_priority, self.stage_seen, batch)
            self.stage_seen += len(batch)
        else:
            self._offer(self.buffer, self.priority, self.seen, batch)
            self.seen += len(batch)

    @hookimpl
    def on_boundary(self) -> None:
        if self.stage is not None and self.stage_seen:
            self._merge(self.stage, self.stage_priority, self.stage_seen)
            self.stage_seen = 0

    def _offer(self, buf: Buffer, priority: torch.Tensor, seen: int, batch: Batch,
               batch_priority: torch.Tensor | None = None) -> None:
        """Offer ``batch`` to ``buf``, which has been offered ``seen`` samples before it."""
        n = len(batch)
        if seen + n <= self.size:  # still filling: every sample is kept, in order
            buf.write(torch.arange(seen, seen + n, device=self.device), batch)
            if self._balanced:
                priority[seen : seen + n] = self._priorities(n) if batch_priority is None else batch_priority
        elif self._balanced:
            self._insert_balanced(buf, priority, min(seen, self.size), batch, batch_priority)
        else:
            buf.write(self._reservoir_slots(seen, n), batch)

    # -- experience-end fill: merging the staged experience into the memory --------------------------
    def _merge(self, stage: Buffer, stage_priority: torch.Tensor, stage_seen: int) -> None:
        """Fold a staging memory that was offered ``stage_seen`` samples into the memory.

        The result is what the policy would hold had every one of those samples been offered to the
        memory itself: a uniform sample of all samples seen (reservoir), or the class-balanced memory
        of the candidates (class-balanced: the staged samples are their classes' smallest priorities
        of the experience, so they are the only ones of it that can win a place).
        """
        staged = min(stage_seen, self.size)
        if self._balanced:
            index = torch.arange(staged, device=self.device)
            self._offer(self.buffer, self.priority, self.filled, stage.gather(index), stage_priority[:staged])
        else:
            # A uniform k-subset of past ∪ current holds h ~ Hypergeometric(current, past, k) current
            # samples: h of the staged ones and k − h of the memory's, each a uniform choice.
            past, size = self.seen, self.size
            k = min(past + stage_seen, size)
            # one host read per boundary (not per batch): the seed of the hypergeometric draw
            seed = int(torch.randint(2**62, (1,), generator=self.generator, device=self.device))
            h = int(np.random.default_rng(seed).hypergeometric(stage_seen, past, k)) if past else k
            if k > h:  # gather copies: the kept samples move to the front, then the new ones follow
                kept = torch.randperm(self.filled, generator=self.generator, device=self.device)[: k - h]
                keep = self.buffer.gather(kept)
                self.buffer.write(torch.arange(k - h, device=self.device), keep)
            new = stage.gather(torch.randperm(staged, generator=self.generator, device=self.device)[:h])
            self.buffer.write(torch.arange(k - h, k, device=self.device), new)
        self.seen += stage_seen

    # -- reservoir (algorithm R) ------------------------------------------------------------------
    def _reservoir_slots(self, seen: int, n: int) -> torch.Tensor:
        """The slot of each sample of the batch, or the scratch row ``size`` when not stored."""
        size, device = self.size, self.device
        position = torch.arange(seen, seen + n, device=device)  # 0-based index in the stream
        # uniform in [0, position]: a 62-bit draw modulo position + 1 (bias < position / 2**62)
        draw = torch.randint(2**62, (n,), generator=self.generator, device=device) % (position + 1)
        slot = torch.where(position < size, position, draw)
        slot = torch.where(slot < size, slot, size)
        # Several samples may draw one slot; sequentially the last would overwrite the others.
        order = torch.arange(n, device=device)
        last = torch.full((size + 1,), -1, dtype=torch.long, device=device).scatter_reduce_(0, slot, order, "amax")
        return torch.where(last.index_select(0, slot) == order, slot, size)

    # -- class-balanced ---------------------------------------------------------------------------
    def _count(self, keys: torch.Tensor) -> torch.Tensor:
        """Candidates per class key in ``[0, num_keys]`` (the last: empty slots), as ``bincount``
        with ``minlength = num_keys + 1`` would count them, without its host read.

        ``torch.bincount`` sizes its result from the largest key, which on CUDA it reads back to the
        host: a synchronisation per batch. The keys' range is known here, so they are added into a
        count tensor of that fixed size (allocated once per run, zeroed per call) with
        ``scatter_add_``. Integer additions: the counts are exact whatever the order.
        """
        counts, ones = self._counts, self._ones
        if counts is None or ones.shape[0] < keys.shape[0]:  # first call, or a larger batch than any before
            counts = self._counts = torch.zeros(self.num_keys + 1, dtype=torch.long, device=keys.device)
            ones = self._ones = torch.ones(keys.shape[0], dtype=torch.long, device=keys.device)
        return counts.zero_().scatter_add_(0, keys, ones[: keys.shape[0]])

    def _keys(self, y: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        return y if task is None else task * self.num_classes + y

    def _priorities(self, n: int) -> torch.Tensor:
        return torch.randint(PRIORITY, (n,), generator=self.generator, device=self.device)

    def _insert_balanced(self, buf: Buffer, mem_priority: torch.Tensor, filled: int, batch: Batch,
                         batch_priority: torch.Tensor | None = None) -> None:
        size, n, device = self.size, len(batch), self.device
        # candidates: the memory's slots (empty ones in a class of their own, K) and the batch
        keys = torch.cat([self._keys(buf.y[:size], None if buf.task is None else buf.task[:size]),
                          self._keys(batch.y, batch.task)])
        keys[filled:size] = self.num_keys
        priority = torch.cat([mem_priority[:size], self._priorities(n) if batch_priority is None else batch_priority])
        # rank of every candidate within its class, smallest priority first (one sort on both keys)
        order = torch.argsort(keys * PRIORITY + priority)
        counts = self._count(keys)
        first = torch.cumsum(counts, 0) - counts
        # index_copy_ with a permutation, not rank[order] = …: the same scatter, but never routed
        # through advanced indexing
        rank = torch.empty_like(keys).index_copy_(
            0, order, torch.arange(len(keys), device=device) - first.index_select(0, keys.index_select(0, order))
        )
        level, leftover = water_level(counts[: self.num_keys], size)
        real = keys < self.num_keys
        keep = real & (rank < level)
        # the leftover slots: one more sample for that many capped classes, chosen at random (by
        # the priority of each one's next candidate)
        next_in_line = real & (rank == level)
        contest = torch.argsort(torch.where(next_in_line, priority, PRIORITY))
        place = torch.empty_like(contest).index_copy_(0, contest, torch.arange(len(keys), device=device))
        keep |= next_in_line & (place < leftover)
        # Pair the batch samples kept with the memory slots freed (evicted ones first, then empty
        # ones in order, so that the filled slots stay the prefix [0, filled)).
        freed = torch.argsort(keep[:size].to(torch.uint8), stable=True)
        if n > size:
            freed = torch.cat([freed, freed.new_full((n - size,), size)])
        stored = torch.argsort((~keep[size:]).to(torch.uint8), stable=True)
        slots = torch.where(torch.arange(n, device=device) < keep[size:].sum(), freed[:n], size)
        buf.write(slots, batch, rows=stored)
        mem_priority.index_copy_(0, slots, priority[size:].index_select(0, stored))

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.buffer is None:
            return dict(self._pending or {})
        state: dict[str, Any] = {
            "memory": self.buffer.state(self.filled),
            "seen": self.seen,
            "policy": self.options.policy,
            "fill": self.options.fill,
            "memory_bytes": self.memory_bytes,
            "rng": self.generator.get_state(),
        }
        if self._balanced:
            state["priority"] = self.priority[: self.filled]
        if self.stage is not None:  # mid-experience: the staged samples are part of the state
            state["stage"] = self.stage.state(self.staged)
            state["stage_seen"] = self.stage_seen
            if self._balanced:
                state["stage_priority"] = self.stage_priority[: self.staged]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.buffer is None:  # before the run: the buffer is allocated on the device at start
            self._pending = state
            return
        n = self.buffer.load(state["memory"])
        self.seen = int(state["seen"])
        if n != self.filled:
            raise ValueError(f"the saved memory holds {n} samples but {self.seen} were seen (memory={self.size})")
        self._load_priority(self.priority, state.get("priority"), n)
        if "rng" in state:
            self.generator.set_state(state["rng"])
        stage_seen = int(state.get("stage_seen", 0))
        if not stage_seen:
            return
        # a memory saved mid-experience with fill = "experience-end"
        stage = self.stage if self.stage is not None else Buffer(self.size, self.device, self.buffer.task is not None)
        stage_priority = self.stage_priority if self.stage is not None else self._new_priority()
        m = stage.load(state["stage"])
        if m != min(stage_seen, self.size):
            raise ValueError(
                f"the saved staging memory holds {m} samples but {stage_seen} were staged (memory={self.size})"
            )
        self._load_priority(stage_priority, state.get("stage_priority"), m)
        if self.stage is not None:
            self.stage_seen = stage_seen
        else:  # continued with fill = "stream": the staged samples join the memory now
            self._merge(stage, stage_priority, stage_seen)

    def _load_priority(self, priority: torch.Tensor, saved: torch.Tensor | None, n: int) -> None:
        if not self._balanced:
            return
        # a reservoir memory continued class-balanced gets fresh random priorities
        priority[:n] = saved if saved is not None else self._priorities(n)


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
