"""What the line-by-line file readers (``csv``, and ``text`` in lifelong_transfer) share.

Both turn a file into parsed records — (line number, features, class index, experience id), bad
records already dead-lettered — and from there behave the same: minibatches in file order cut where
the experience changes, 1-based half-open line offsets, a seeded hold-out of test rows per line, and
test sets handed to the kernel's training thread once the stream (on the reader thread) has moved
past an experience. That logic lives here once, in :class:`RecordStream`, so the readers differ only
in how they parse a record and which dtype their features have.

Both are resumable (see :mod:`lifelong.readers`): files are read as bytes by :class:`Lines`, which
knows the byte offset and line number after every record, and a batch's position is
``{"offset", "line", "segment", "experience"}``: where the next record starts, and where the
current experience's run of records began. ``seek`` opens the file at that offset; the rows of the
current experience held out before it are collected again from ``segment`` (read quietly: their
bad records are in the dead-letter file already), so its test set is whole.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Iterator

import numpy as np
import torch

from lifelong.readers import ReaderContext
from lifelong.types import Batch, StreamInfo

Rows = list[tuple[np.ndarray, int]]  # (features, class index) of one experience
Position = dict[str, int]  # {"offset": byte offset, "line": 1-based number of the line starting there}
BOM = b"\xef\xbb\xbf"


class Lines:
    """Decoded lines of a file read as bytes, with the byte offset and line number after each one.

    Undecodable bytes become U+FFFD (a bad record, not the end of the stream); a UTF-8 byte-order
    mark at the start of the file is skipped. ``taken`` collects the lines handed out since the last
    ``take()``, so a parser that consumes several lines per record can return the record's raw text.
    """

    def __init__(self, handle: Any, start: Position | None = None):
        self._handle = handle
        if start is None:
            if handle.read(3) != BOM:
                handle.seek(0)
            self.offset, self.line = handle.tell(), 1
        else:
            handle.seek(start["offset"])
            self.offset, self.line = start["offset"], start["line"]
        self.taken: list[str] = []

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        data = self._handle.readline()
        if not data:
            raise StopIteration
        self.offset += len(data)
        self.line += 1
        text = data.decode("utf-8", errors="replace")
        self.taken.append(text)
        return text

    def position(self) -> Position:
        return {"offset": self.offset, "line": self.line}

    def take(self) -> str:
        raw = "".join(self.taken).rstrip("\r\n")
        self.taken.clear()
        return raw


class BadRecord(Exception):
    """A record that goes to the dead letters; the message is the reason."""


def check_options(options: Any, unit: str) -> None:
    """The option checks both readers make; ``unit`` ("column" or "field") is how their errors name one."""
    if not 0.0 <= options.test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {options.test_fraction}")
    if options.test_path and options.test_fraction:
        raise ValueError("set test_path or test_fraction, not both")
    if len(options.delimiter) != 1:
        raise ValueError(f"delimiter must be one character, got {options.delimiter!r}")
    if options.classes is not None and (not options.classes or len(set(options.classes)) != len(options.classes)):
        raise ValueError(f"classes must list distinct label values, got {options.classes}")
    if options.scenario == "task" and not options.experience:
        raise ValueError(f"the task scenario takes its task ids from the experience {unit}: set experience")


def held_out(seed: int, line: int, fraction: float) -> bool:
    """Whether a line belongs to the test set: a stable hash (unlike ``hash()``) of seed and line.

    Decided per line, so a stream can hold rows out without knowing the file's length.
    """
    digest = hashlib.blake2b(f"{seed}:{line}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def label_order(labels: set[str]) -> list[str]:
    """Scanned labels in head order: numerically when all are numbers (so "10" follows "9"), else as text."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


class RecordStream:
    """A reader over parsed records; subclasses set the attributes below and implement ``_parsed``.

    ``_set_up`` (called at the end of the subclass's ``__init__``) reads the fixed test file, if
    any, and builds the StreamInfo.
    """

    x_dtype: Any = np.float32  # dtype of a batch's features
    options: Any  # has test_fraction and scenario
    context: ReaderContext
    source: str
    task: bool
    num_tasks: int

    def _parsed(
        self, source: str, start: Position | None = None, quiet: bool = False
    ) -> Iterator[tuple[int, np.ndarray | None, int, int, Position]]:
        """(line, features, class index, experience id, position after it) of every record of
        ``source`` in file order, from ``start`` (a position) or the first record; a bad record
        comes as (line, None, -1, -1, position after it), already dead-lettered unless ``quiet``."""
        raise NotImplementedError

    def _set_up(
        self, input_shape: tuple[int, ...], classes: list[str], test_source: str, feature_names: list[str] | None = None
    ) -> None:
        self._lock = threading.Lock()  # test sets are written on the reader thread, read on the training thread
        self._held: dict[int, Rows] = {}
        self._ready: dict[int, Batch] = {}
        self._fixed = self._read_test(test_source) if test_source else {}
        self._info = StreamInfo(
            input_shape=input_shape,
            num_classes=len(classes),
            scenario=self.options.scenario,
            num_tasks=self.num_tasks,
            # A fixed test file's experiences in first-seen order are the accuracy matrix's columns;
            # a stream alone does not know its future experiences.
            experiences=list(self._fixed) if test_source else None,
            class_names=list(classes),
            feature_names=feature_names,
        )

    def _read_test(self, source: str) -> dict[int, Batch]:
        rows: dict[int, Rows] = {}
        for _, x, y, exp, _ in self._parsed(source):
            if x is not None:
                rows.setdefault(exp, []).append((x, y))
        return {exp: self._batch(data, exp, source) for exp, data in rows.items()}

    def _batch(self, rows: Rows, exp: int, source: str, start: int = 0, stop: int = 0, position: Any = None) -> Batch:
        x = torch.from_numpy(np.stack([r[0] for r in rows]).astype(self.x_dtype, copy=False))
        y = torch.tensor([r[1] for r in rows], dtype=torch.long)
        task = torch.full((len(rows),), exp, dtype=torch.long) if self.task else None
        return Batch(x=x, y=y, experience=exp, task=task, source=source, start=start, stop=stop, position=position)

    def info(self) -> StreamInfo:
        return self._info

    def seek(self, position: dict[str, Any]) -> None:
        if not isinstance(position, dict) or not {"offset", "line", "segment", "experience"} <= set(position):
            raise ValueError(f"not a position of this stream: {position!r}")
        self._resume = position

    def __iter__(self) -> Iterator[Batch]:
        """Batches of ``batch_size`` rows in file order, cut where the experience changes; held-out
        rows are set aside for the experience's test set."""
        with self._lock:
            self._held, self._ready = {}, {}
        fraction, seed, size = self.options.test_fraction, self.context.seed, self.context.batch_size
        resume, self._resume = getattr(self, "_resume", None), None
        current: int | None = None
        segment: Position | None = None  # where the current experience's run of records began
        here: Position | None = None  # after the last record read
        if resume is not None:
            here = {"offset": resume["offset"], "line": resume["line"]}
            current, segment = resume["experience"], resume["segment"]
            if current is not None and fraction:
                self._recollect(segment, here, current)

        def position(at: Position | None, exp: int | None) -> dict[str, Any]:
            return {**(at or {"offset": 0, "line": 1}), "segment": segment, "experience": exp}

        rows: Rows = []
        start = last = 0
        for line, x, y, exp, after in self._parsed(self.source, here):
            before, here = here, after
            if x is None:
                continue
            if exp != current:
                if current is not None:
                    self._finish(current)  # before its last batch, so it is ready when the boundary comes
                if rows:
                    # The stream stands before this record, which opens the next experience; the position
                    # still names the finished one, so a seek here collects its held-out rows again.
                    yield self._batch(rows, current, self.source, start, last + 1, position(before, current))  # type: ignore[arg-type]
                    rows = []
                segment = before
                current = exp
            if fraction and held_out(seed, line, fraction):
                self._held.setdefault(exp, []).append((x, y))
                continue
            if not rows:
                start = line
            rows.append((x, y))
            last = line
            if len(rows) == size:
                yield self._batch(rows, exp, self.source, start, last + 1, position(here, exp))
                rows = []
        if current is not None:
            self._finish(current)
        if rows:
            yield self._batch(rows, current, self.source, start, last + 1, position(here, current))  # type: ignore[arg-type]

    def _recollect(self, segment: Position, until: Position, exp: int) -> None:
        """The rows of ``exp`` held out between ``segment`` and ``until``, read again after a seek."""
        fraction, seed = self.options.test_fraction, self.context.seed
        for line, x, y, row_exp, after in self._parsed(self.source, segment, quiet=True):
            if x is not None and row_exp == exp and held_out(seed, line, fraction):
                self._held.setdefault(exp, []).append((x, y))
            if after["offset"] >= until["offset"]:
                return

    def _finish(self, exp: int) -> None:
        """The stream moved past ``exp``: its held-out rows so far become its test set."""
        held = self._held.get(exp)
        if held:
            batch = self._batch(held, exp, self.source)
            with self._lock:
                self._ready[exp] = batch

    def test_set(self, experience: int) -> Batch | None:
        if experience in self._fixed:
            return self._fixed[experience]
        with self._lock:
            return self._ready.get(experience)
