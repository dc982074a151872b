"""What the kernel gives readers (batch size, seed, the dead-letter file) and how it consumes them.

The reader contract, including the position contract that makes a run resumable:

- ``info() -> StreamInfo`` before the first batch;
- ``__iter__() -> Iterator[Batch]``: the training stream, in order; it runs on the kernel's
  reader thread;
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
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

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
    """

    def __init__(self, path: str | Path, run: str = ""):
        self.run = run
        self.count = 0
        self._lock = threading.Lock()
        self._file = None
        self.move(path)

    def move(self, path: str | Path) -> None:
        """Write to ``path`` instead; only before the first bad record."""
        self.path = Path(path)
        self._size = self.path.stat().st_size if self.path.is_file() else 0  # kept, so mark() needs no syscall

    def __call__(self, reason: str, source: str, offset: int | str, record: Any = None) -> None:
        entry = {"run": self.run, "reason": reason, "source": source, "offset": offset, "record": record}
        line = json.dumps(entry, default=str)
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()
            self._size = self._file.tell()
            self.count += 1

    def mark(self) -> dict[str, int]:
        with self._lock:
            return {"bytes": self._size, "count": self.count}

    def restore(self, mark: dict[str, int]) -> None:
        """Drop this run's lines written after ``mark``; lines of other runs sharing the file stay."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self.path.is_file() and self.path.stat().st_size > mark["bytes"]:
                with self.path.open("rb+") as f:
                    f.seek(mark["bytes"])
                    others = [line for line in f.read().splitlines(keepends=True) if not self._ours(line)]
                    f.seek(mark["bytes"])
                    f.truncate()
                    f.writelines(others)
            self._size = self.path.stat().st_size if self.path.is_file() else 0
            self.count = int(mark["count"])

    def _ours(self, line: bytes) -> bool:
        try:
            return json.loads(line).get("run") == self.run
        except (ValueError, AttributeError):
            return False

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def summary(self) -> dict[str, Any]:
        return {"count": self.count, "file": str(self.path) if self.count else None, "run": self.run}


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
    """

    _END = object()

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
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.quiet_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(reader,), name="lifelong-reader", daemon=True)
        self._thread.start()

    def _fill(self, reader: Reader) -> None:
        try:
            for batch in reader:
                mark = self._dead_letters.mark() if self._dead_letters is not None else None
                if self._transform is not None:
                    batch = host_prepared(batch, self._transform)
                if self._pin:
                    batch = _pinned(batch)
                while not self._stop.is_set():
                    try:
                        self._queue.put(Fetched(batch, mark), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._queue.put(exc)

    def fetched(self, stopping: Any = None, idle: Any = None, patience: float | None = None) -> Iterator[Fetched | None]:
        """The batches in order; every 0.2 s without one, ``stopping()`` may end the wait and ``idle()`` runs.

        With ``patience``, a wait of that many seconds yields None ("nothing now") and goes on: a
        data-parallel rank then takes part in its step without a batch.

        ``quiet_seconds`` sums the waits that lasted 0.2 s or more: the source had nothing to give
        (a broker stream between records, the ``idle_timeout`` before it ends), not time the
        pipeline spent on training or on parsing.
        """
        waiting_since: float | None = None
        while True:
            try:
                item = self._queue.get(timeout=0.2 if patience is None else min(0.2, patience))
            except queue.Empty:
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

    def close(self) -> None:
        self._stop.set()
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
