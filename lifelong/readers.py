"""What the kernel gives readers (batch size, seed, the dead-letter file) and how it consumes them."""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from lifelong.types import Batch, StreamInfo


class Reader(Protocol):
    def info(self) -> StreamInfo: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def test_set(self, experience: int) -> Batch | None: ...


class DeadLetters:
    """Bad records, one JSON line each: the reason, the source and the offset, and the raw record.

    The file is created on the first bad record only, so clean runs leave nothing behind.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0
        self._lock = threading.Lock()
        self._file = None

    def __call__(self, reason: str, source: str, offset: int | str, record: Any = None) -> None:
        line = json.dumps({"reason": reason, "source": source, "offset": offset, "record": record}, default=str)
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line + "\n")
            self._file.flush()
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def summary(self) -> dict[str, Any]:
        return {"count": self.count, "file": str(self.path) if self.count else None}


@dataclass
class ReaderContext:
    """Handed to every reader factory."""

    batch_size: int
    seed: int
    dead_letter: DeadLetters = field(default_factory=lambda: DeadLetters("dead_letters.jsonl"))


class Prefetcher:
    """Iterates a reader on its own thread so parsing and file I/O stay off the training thread.

    Exceptions raised by the reader are re-raised in the consumer, at the batch where they happened.
    With ``pin`` (training on CUDA) batches are copied to page-locked memory here, so the training
    thread's ``non_blocking`` copy to the device is truly asynchronous.
    """

    _END = object()

    def __init__(self, reader: Reader, depth: int = 8, pin: bool = False):
        self._pin = pin
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(reader,), name="lifelong-reader", daemon=True)
        self._thread.start()

    def _fill(self, reader: Reader) -> None:
        try:
            for batch in reader:
                if self._pin:
                    batch = _pinned(batch)
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._queue.put(exc)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _pinned(batch: Batch) -> Batch:
    return Batch(
        x=batch.x.pin_memory(),
        y=batch.y.pin_memory(),
        experience=batch.experience,
        task=None if batch.task is None else batch.task.pin_memory(),
        source=batch.source,
        start=batch.start,
        stop=batch.stop,
    )
