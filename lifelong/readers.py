"""What the kernel gives readers (batch size, seed, the dead-letter file) and how it consumes them.

The reader contract, including the position contract that makes a run resumable:

- ``info() -> StreamInfo`` before the first batch;
- ``__iter__() -> Iterator[Batch]``: the training stream, in order; it runs on the kernel's
  reader thread, or on the training thread for a reader that says ``in_memory = True`` (its
  batches are slices of data loaded before the run: no I/O, little Python; see :class:`Prefetcher`);
- ``test_set(experience) -> Batch | None``: held-out data of an experience, or None while it is
  not known yet;
- **resumable readers** also stamp every batch with ``Batch.position`` — plain JSON data saying
  where the stream stands right after that batch — and offer ``seek(position)``: called once,
  before ``__iter__``, it makes the stream start right after the batch that carried ``position``,
  producing exactly the batches an uninterrupted run would have produced next. A position must
  account for every record before it: records trained on, held out for testing, or sent to the
  dead letters (the kernel checkpoints the dead-letter file's length with the position of the
  batch the reader yielded after writing them). ``csv`` seeks by byte offset and line, ``npz`` and
  the benchmarks by record index. A reader without ``seek`` makes ``lifelong run --resume`` and
  checkpointing refuse with a clear message.

Readers of a source that must be told what was consumed (a Kafka consumer group, a Redis Streams
group) follow **checkpoint, then commit**, through optional members:

- ``commit(position)``: called on the checkpoint-writer thread right after a checkpoint whose
  reader position is ``position`` is durable (fsynced and renamed into place); the reader commits
  its offsets or acknowledges its records up to there. It must be safe to call while ``__iter__``
  runs on the reader thread, bounded in time, idempotent and cumulative: an exception is reported
  (``commit_errors`` in the summary) and training goes on, since the next checkpoint commits again.
  The checkpoint's position stays the source of truth on resume (``seek``), so a crash between the
  checkpoint and the commit trains nothing twice. A reader with ``commit`` needs ``[checkpoint]
  dir``: the run refuses to start without it (exit status 2).
- ``close()``: once, at the end of the session on every path (end, failure, signal), from the main
  thread, after the last commit and after the reader thread was asked to stop (a reader polls with
  timeouts of a second or less, so its thread notices).
- ``checkpoint_wanted() -> bool``: polled on the training thread after every batch and every
  0.2 s while it waits for one, so it must be a cheap read. True asks for a checkpoint of the last
  trained batch as soon as the writer is free (or, when that batch is checkpointed already, for
  its commit again): a Kafka consumer losing partitions in a rebalance waits for this before it
  lets them go, so the next owner starts right after the records this one trained.
- ``rebalance_hold() -> str`` and ``release_revocation()`` (data-parallel ranks): polled on the
  training thread at every step, ``"holding"`` says the reader has committed the partitions it is
  giving up and keeps them until the other ranks have too, ``"free"`` that it has none to give up
  (joining the group, or between a revocation and the next assignment), ``"busy"`` otherwise. Once
  one rank holds and every rank holds, is free or has ended its stream, the kernel calls
  ``release_revocation()`` on every rank at the same step, so that no rank rejoins the group before
  all have committed (``lifelong_brokers.kafka``: why).
- ``counts(position) -> dict[str, int]``: what the reader counted up to ``position`` (a position
  it produced, or None before the first batch): unlabeled records, held-out records …; the summary
  shows it as ``reader``.

A **partitioned** reader (``partitioned = True``: its source hands each data-parallel rank its own
records, see :class:`ReaderContext`) whose records may move between ranks across a restart (Kafka
partitions reassigned by the group) offers ``seek_ranks(position, positions)``: called instead of
``seek`` on resume, with this rank's position (None before its first batch) and every rank's.

A reader's ``__iter__`` may end on its own (a broker reader after ``idle_timeout`` seconds without
records): the run then ends normally, with its last generation, checkpoint and commit.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lifelong.types import Batch, StreamInfo


class Reader(Protocol):
    def info(self) -> StreamInfo: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def test_set(self, experience: int) -> Batch | None: ...


def can_seek(reader: Any) -> bool:
    return callable(getattr(reader, "seek", None))


class DeadLetters:
    """Bad records, one JSON line each: the run, the reason, the source and the offset, and the raw record.

    Every line carries ``run``, the session id, so several runs may share one file and each
    summary's count matches the lines of its own run. The file is created on the first bad record
    only, so clean runs leave nothing behind. ``mark()`` is the file's length and this run's count
    at a point of the stream; ``restore(mark)`` (on resume) cuts the file back there, since the
    records after it are read, and dead-lettered, again.

    Besides the records a reader refuses (``count``), the session writes one line per stream batch
    the learner read but did not apply, its loss or gradients being non-finite (``not_applied``,
    :meth:`not_applied_batch`): the line names the batch's step, source, offsets and number of
    records, and has no ``record``, since the batch's values are only on the device by then.
    """

    def __init__(self, path: str | Path, run: str = ""):
        self.run = run
        self.count = 0
        self.not_applied = 0
        self._lock = threading.Lock()
        self._file = None
        self.move(path)

    def move(self, path: str | Path) -> None:
        """Write to ``path`` instead; only before the first bad record."""
        self.path = Path(path)
        self._size = self.path.stat().st_size if self.path.is_file() else 0  # kept, so mark() needs no syscall

    def __call__(self, reason: str, source: str, offset: int | str, record: Any = None) -> None:
        self._write({"run": self.run, "reason": reason, "source": source, "offset": offset, "record": record}, "count")

    def not_applied_batch(self, step: int, source: str, start: int, stop: int, records: int | None, reason: str) -> None:
        """A stream batch the learner did not apply: one line for its records, ``offset`` to ``stop`` (half-open)."""
        self._write(
            {"run": self.run, "reason": reason, "source": source, "offset": start, "stop": stop, "records": records, "step": step, "record": None},
            "not_applied",
        )

    def _write(self, entry: dict[str, Any], counter: str) -> None:
        """Append ``entry`` and count it in ``counter``, under one lock: a mark taken on another thread
        sees both or neither."""
        line = json.dumps(entry, default=str)
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()
            self._size = self._file.tell()
            setattr(self, counter, getattr(self, counter) + 1)

    def mark(self) -> dict[str, int]:
        with self._lock:
            return {"bytes": self._size, "count": self.count, "not_applied": self.not_applied}

    def restore(self, mark: dict[str, int], applied_before: int = 0) -> None:
        """Drop this run's lines written after ``mark``, but for its not-applied batches of a step below
        ``applied_before``: the session wrote those when it read the flags of steps the checkpoint
        holds as trained, so no later step writes them again. Lines of other runs sharing the file stay."""
        kept = 0
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self.path.is_file() and self.path.stat().st_size > mark["bytes"]:
                with self.path.open("rb+") as f:
                    f.seek(mark["bytes"])
                    lines = f.read().splitlines(keepends=True)
                    entries = [self._entry(line) for line in lines]
                    ours = [entry is not None and entry.get("run") == self.run for entry in entries]
                    keep = [
                        not mine or (isinstance(entry.get("step"), int) and entry["step"] < applied_before)
                        for mine, entry in zip(ours, entries)
                    ]
                    kept = sum(1 for mine, k in zip(ours, keep) if mine and k)
                    f.seek(mark["bytes"])
                    f.truncate()
                    f.writelines(line for line, k in zip(lines, keep) if k)
            self._size = self.path.stat().st_size if self.path.is_file() else 0
            self.count = int(mark["count"])
            self.not_applied = int(mark.get("not_applied", 0)) + kept  # checkpoints from before it have none

    @staticmethod
    def _entry(line: bytes) -> dict[str, Any] | None:
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        return entry if isinstance(entry, dict) else None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def summary(self) -> dict[str, Any]:
        written = self.count or self.not_applied
        return {"count": self.count, "not_applied": self.not_applied, "file": str(self.path) if written else None, "run": self.run}


@dataclass
class ReaderContext:
    """Handed to every reader factory.

    ``rank`` and ``ranks`` place the reader in a data-parallel run (0 and 1 otherwise). A reader
    whose source hands each of several consumers its own records (a broker's consumer group) reads
    only this rank's share and says so with ``partitioned = True``; every other reader reads the
    whole stream and the kernel keeps this rank's share (:mod:`lifelong.sharding`).
    """

    batch_size: int
    seed: int
    dead_letter: DeadLetters = field(default_factory=lambda: DeadLetters("dead_letters.jsonl"))
    rank: int = 0
    ranks: int = 1


@dataclass
class Fetched:
    """A batch as the training thread receives it, with the dead-letter mark taken when it was read."""

    batch: Batch
    dead_letters: dict[str, int] | None


class Prefetcher:
    """Iterates a reader on its own thread so parsing and file I/O stay off the training thread.

    Exceptions raised by the reader are re-raised in the consumer, at the batch where they happened.
    ``transform`` (the model's optional ``prepare_host``, see ``register_models``), when given, maps
    each batch's ``x`` (a CPU tensor) to the CPU tensor the training thread receives instead (a text
    model's tokenizer): host-side work on the reader thread, not the training thread; an exception it
    raises reaches the consumer as the reader's do. With ``pin`` (training on CUDA) batches are then
    copied to page-locked memory here, so the training thread's ``non_blocking`` copy to the device
    is truly asynchronous. Each batch comes with the dead-letter mark taken right after the reader
    produced it (see the position contract above). The consumer polls, so ``stopping()`` (a signal
    asked the run to stop) ends a wait for a batch.

    **Refills in bursts.** Once ``depth`` batches wait, the reader thread sleeps until the training
    thread has taken them down to ``depth // 2``, then reads until the queue is full again. Woken
    for every batch taken instead (``queue.Queue``), it competed for the GIL at every step: each
    torch operation releases the GIL, so the training thread lost it to the reader and waited for it
    to come back, which cost a small MLP's step about a sixth of its time. In bursts the reader
    wakes once per ``depth // 2`` batches.

    **In-memory readers are read here.** A reader that says ``in_memory = True`` (its batches are
    slices of tensors loaded before the run: the benchmarks, npz, the anomaly arrays) is iterated on
    the training thread when nothing is to be done per batch on the host (no ``transform``, no
    pinning): reading a batch is a few microseconds of Python, no I/O, and handing it between
    threads cost more than reading it. Training on CUDA keeps the thread, which pins each batch.
    """

    _END = object()
    _EMPTY = object()

    def __init__(
        self,
        reader: Reader,
        depth: int = 8,
        pin: bool = False,
        dead_letters: DeadLetters | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self._pin = pin
        self._dead_letters = dead_letters
        self._transform = transform
        self._items: deque[Any] = deque()
        self._depth, self._refill_at = depth, depth // 2
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the training thread waits for an item
        self._room = threading.Condition(self._lock)  # the reader thread waits for the queue to drain to _refill_at
        self.quiet_seconds = 0.0
        self._stop = threading.Event()
        # an in-memory reader with nothing to do per batch on the host is read here, on the training thread
        self._inline = reader if getattr(reader, "in_memory", False) and not pin and transform is None else None
        self._thread = threading.Thread(target=self._fill, args=(reader,), name="lifelong-reader", daemon=True)
        if self._inline is None:
            self._thread.start()

    def _fill(self, reader: Reader) -> None:
        try:
            for batch in reader:
                mark = self._dead_letters.mark() if self._dead_letters is not None else None
                if self._transform is not None:
                    batch = host_prepared(batch, self._transform)
                if self._pin:
                    batch = _pinned(batch)
                if not self._put(Fetched(batch, mark)):
                    return
            self._put(self._END, last=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc, last=True)

    def _put(self, item: Any, last: bool = False) -> bool:
        """Queue ``item``; when the queue is full, first sleep until it has drained to ``_refill_at``
        (the ``last`` item never waits). False when the consumer closed the stream meanwhile."""
        with self._lock:
            if not last and len(self._items) >= self._depth:
                while len(self._items) > self._refill_at and not self._stop.is_set():
                    self._room.wait(0.1)
            if self._stop.is_set():
                return False
            self._items.append(item)
            self._ready.notify()
            return True

    def _get(self, timeout: float) -> Any:
        """The next item, or ``_EMPTY`` after ``timeout`` seconds without one."""
        with self._lock:
            if not self._items and not self._ready.wait_for(lambda: bool(self._items), timeout):
                return self._EMPTY
            item = self._items.popleft()
            if len(self._items) == self._refill_at:
                self._room.notify()
            return item

    def fetched(self, stopping: Any = None, idle: Any = None, patience: float | None = None) -> Iterator[Fetched | None]:
        """The batches in order; every 0.2 s without one, ``stopping()`` may end the wait and ``idle()`` runs.

        With ``patience``, a wait of that many seconds yields None ("nothing now") and goes on: a
        data-parallel rank then takes part in its step without a batch.

        ``quiet_seconds`` sums the waits that lasted 0.2 s or more: the source had nothing to give
        (a broker stream between records, the ``idle_timeout`` before it ends), not time the
        pipeline spent on training or on parsing.
        """
        if self._inline is not None:
            yield from self._read_inline()
            return
        waiting_since: float | None = None
        while True:
            item = self._get(0.2 if patience is None else min(0.2, patience))
            if item is self._EMPTY:
                if waiting_since is None:
                    waiting_since = time.perf_counter() - (0.2 if patience is None else min(0.2, patience))
                if stopping is not None and stopping():
                    self.quiet_seconds += time.perf_counter() - waiting_since
                    return
                if idle is not None:
                    idle()
                if patience is not None:
                    yield None
                continue
            if waiting_since is not None:
                self.quiet_seconds += time.perf_counter() - waiting_since
                waiting_since = None
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _read_inline(self) -> Iterator[Fetched]:
        for batch in self._inline:
            if self._stop.is_set():
                return
            yield Fetched(batch, self._dead_letters.mark() if self._dead_letters is not None else None)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            self._room.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def host_prepared(batch: Batch, transform: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    """``batch`` with ``x`` through ``transform`` (a model's ``prepare_host``), run without gradients."""
    with torch.no_grad():
        return dataclasses.replace(batch, x=transform(batch.x))


def _pinned(batch: Batch) -> Batch:
    return Batch(
        x=batch.x.pin_memory(),
        y=batch.y.pin_memory(),
        experience=batch.experience,
        task=None if batch.task is None else batch.task.pin_memory(),
        source=batch.source,
        start=batch.start,
        stop=batch.stop,
        position=batch.position,
    )
