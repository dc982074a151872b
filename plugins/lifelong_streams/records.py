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

Hostile records (issue 13) are handled here once for both readers:

- **Encoding.** A record with bytes that are not valid UTF-8 is a dead letter naming the byte and
  its column (U+FFFD would otherwise turn into a new class or a silently changed text).
- **Labels** (:class:`LabelScan`, :class:`Labels`). Without declared ``classes`` the reader scans
  the file once upfront and the scan fixes the classes before the first batch (the model's head
  is built from them), so a label the scan did not accept is a dead letter, never a new class
  mid-stream. The scan decides the column's kind by majority of the valid records: when more than
  half of the labels are integers (``3``, ``+3``, ``03`` and ``3.0`` are all the class ``3``) the
  column holds *class numbers*, and a label that is not a non-negative integer (``cat``,
  ``3.5``, ``-1``) is a dead letter whose reason says to declare ``classes`` to accept it;
  otherwise every non-empty label is a class, compared as text. More than ``max_classes``
  distinct classes is refused before training (UserError, exit 2): a label column with that many
  values is almost always an id or a measurement chosen as the label by mistake. The scan prints
  one line with the classes it found and, in a class-number column, how many records it will
  reject. Declared ``classes`` are taken as given (compared as text) and are not limited.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from typing import Any, Iterator

import numpy as np
import torch

from lifelong.errors import UserError
from lifelong.readers import ReaderContext
from lifelong.types import Batch, StreamInfo

Rows = list[tuple[np.ndarray, int]]  # (features, class index) of one experience
Position = dict[str, int]  # {"offset": byte offset, "line": 1-based number of the line starting there}
BOM = b"\xef\xbb\xbf"
MAX_CLASSES = 1000  # default bound on scanned classes; see the module docstring
MAX_CLASSES_LIMIT = 1_000_000  # the most max_classes may be set to


class Continued(Exception):
    """Raised by :class:`Lines` when a record that must fit on one physical line asks for the next one."""


class Lines:
    """Decoded lines of a file read as bytes, with the byte offset and line number after each one.

    Undecodable bytes become U+FFFD and ``utf8_error`` says where they were, so the record can be
    dead-lettered (a bad record, not the end of the stream); a UTF-8 byte-order mark at the start
    of the file is skipped. ``taken`` collects the lines handed out since the last ``take()``, so
    a parser that consumes several lines per record can return the record's raw text.

    ``single``: a record must fit on one physical line; asking for a second line before ``take()``
    raises :class:`Continued` (the csv module does so when a quote is not closed by the end of the
    line). ``give_back()`` returns every line of the current record but the first, so a parser can
    resynchronise at the next line boundary after a record that failed across several lines.
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
        self._raw: list[bytes] = []
        self._back: list[bytes] = []  # lines given back, read again before the file (last first)
        self.single = False
        self.ended = False  # the file ended while the current record asked for more lines
        self.utf8_error = ""

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        if self.single and self.taken:
            raise Continued
        data = self._back.pop() if self._back else self._handle.readline()
        if not data:
            if self.taken:
                self.ended = True
            raise StopIteration
        self.offset += len(data)
        self.line += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = data.decode("utf-8", errors="replace")
            if not self.utf8_error:
                where = f" of line {self.line - 1}" if self.taken else ""
                self.utf8_error = f"not valid UTF-8: byte 0x{data[exc.start]:02x} at column {exc.start + 1}{where}"
        self.taken.append(text)
        self._raw.append(data)
        return text

    def position(self) -> Position:
        return {"offset": self.offset, "line": self.line}

    def take(self) -> str:
        raw = "".join(self.taken).rstrip("\r\n")
        self.taken.clear()
        self._raw.clear()
        self.ended = False
        self.utf8_error = ""
        return raw

    def give_back(self) -> str:
        """Keep only the current record's first line (returned, as ``take()`` would) and read the others again."""
        rest = self._raw[1:]
        self._back.extend(reversed(rest))
        self.offset -= sum(len(data) for data in rest)
        self.line -= len(rest)
        self.taken, self._raw = self.taken[:1], self._raw[:1]
        return self.take()


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
    check_max_classes(options.max_classes)


def check_max_classes(max_classes: int) -> None:
    if not 1 <= max_classes <= MAX_CLASSES_LIMIT:
        raise ValueError(f"max_classes must be between 1 and {MAX_CLASSES_LIMIT:,}, got {max_classes}")


def held_out(seed: int, line: int, fraction: float) -> bool:
    """Whether a line belongs to the test set: a stable hash (unlike ``hash()``) of seed and line.

    Decided per line, so a stream can hold rows out without knowing the file's length.
    """
    digest = hashlib.blake2b(f"{seed}:{line}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def label_order(labels: Any) -> list[str]:
    """Scanned labels in head order: numerically when all are numbers (so "10" follows "9"), else as text."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


FLOAT32_MAX = float(np.finfo(np.float32).max)
_INTEGER = re.compile(r"[+-]?[0-9]+(?:\.0*)?")


def as_integer(label: str) -> int | None:
    """The integer a label spells (``3``, ``+3``, ``03``, ``3.0``), or None."""
    if not _INTEGER.fullmatch(label):
        return None
    try:
        return int(label.split(".", 1)[0])
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return None


def say(message: str) -> None:
    """One line for the person running the pipeline (the kernel's convention: stderr, prefixed)."""
    print(f"lifelong: {message}", file=sys.stderr, flush=True)


def clip(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters (the cut marked with …)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: reasons and messages name a value, they do not copy it."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _shown(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(short(n, 24) for n in names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


class LabelScan:
    """The labels of a file's valid records, scanned upfront; ``classes()`` applies the label policy.

    Memory is bounded: at most ``max_classes + 1`` distinct labels of each kind are kept, which is
    enough to know that a kind has too many.
    """

    def __init__(self, max_classes: int):
        self.max_classes = max_classes
        self.numbers: dict[int, int] = {}  # non-negative integer label -> records
        self.texts: dict[str, int] = {}  # every label as text -> records
        self.integer_rows = 0  # records whose label spells an integer (negative ones included)
        self.other_rows = 0
        self.negative_rows = 0
        self.rejected: dict[str, int] = {}  # a few labels a class-number column rejects -> records

    def add(self, label: str) -> None:
        value = as_integer(label)
        if value is not None:
            self.integer_rows += 1
            if value >= 0:
                if value in self.numbers or len(self.numbers) <= self.max_classes:
                    self.numbers[value] = self.numbers.get(value, 0) + 1
            else:
                self.negative_rows += 1
                self._reject(label)
        else:
            self.other_rows += 1
            self._reject(label)
        if label in self.texts or len(self.texts) <= self.max_classes:
            self.texts[label] = self.texts.get(label, 0) + 1

    def _reject(self, label: str) -> None:
        if label in self.rejected or len(self.rejected) < 100:
            self.rejected[label] = self.rejected.get(label, 0) + 1

    @property
    def integers(self) -> bool:
        """The column holds class numbers: more than half of its valid labels are integers."""
        return self.integer_rows > self.other_rows

    def full(self) -> bool:
        """Both kinds already hold more than ``max_classes`` labels: reading on cannot change the verdict."""
        return len(self.numbers) > self.max_classes and len(self.texts) > self.max_classes

    def classes(self, what: str) -> tuple[list[str], bool]:
        """(class names in head order, whether the column holds class numbers); ``what`` names the
        file and column in messages. Refuses more than ``max_classes`` classes."""
        integers = self.integers
        found = len(self.numbers) if integers else len(self.texts)
        if found > self.max_classes:
            kind = "distinct non-negative integer labels" if integers else "distinct labels"
            raise UserError(
                f"{what} has at least {found} {kind}, more than max_classes = {self.max_classes}: a label column "
                "with that many values is usually an id or a measurement chosen as the label by mistake. Name the "
                "right column in stream.label, declare stream.classes, or raise stream.max_classes"
            )
        if integers:
            return [str(v) for v in sorted(self.numbers)], True
        return label_order(self.texts), False

    def report(self, what: str) -> None:
        """One line: the classes found and, in a class-number column, the records it will reject."""
        names, integers = self.classes(what)
        line = f"{what}: {len(names)} classes scanned ({'class numbers' if integers else 'text'}): {_shown(names)}"
        rejected = self.other_rows + self.negative_rows
        if integers and rejected:
            examples = sorted(self.rejected, key=lambda k: -self.rejected[k])
            line += (
                f"; {rejected} record(s) whose label is not a non-negative integer ({_shown(examples, 5)}) "
                "go to the dead letters (declare stream.classes to accept them)"
            )
        say(line)


class Labels:
    """A label's class index under the policy the scan chose, or BadRecord with the reason.

    ``integers``: the column holds class numbers, so a label must spell a non-negative integer and
    is compared by value; otherwise labels are compared as text (declared ``classes`` always are).
    """

    def __init__(self, names: list[str], integers: bool, column: str):
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        self.integers = integers
        self.column = column

    def __call__(self, label: str) -> int:
        if self.integers:
            value = as_integer(label)
            if value is None:
                raise BadRecord(
                    f"label {short(label)} in {self.column} is not an integer, and the label column holds integers: "
                    f"declare classes = [...] to accept it"
                )
            if value < 0:
                raise BadRecord(
                    f"label {short(label)} in {self.column} is negative, and the label column holds class numbers (≥ 0): "
                    f"declare classes = [...] to accept it"
                )
            label = str(value)
        try:
            return self.index[label]
        except KeyError:
            raise BadRecord(f"label {short(label)} in {self.column} is not one of the classes") from None


def check_task_heads(num_tasks: int, num_classes: int, max_classes: int, what: str) -> None:
    """The task scenario has one head per experience id: refuse heads × classes beyond ``max_classes``."""
    if num_tasks * num_classes > max_classes:
        raise UserError(
            f"{what}: the task scenario would build {num_tasks} heads (largest experience id {num_tasks - 1}) of "
            f"{num_classes} classes, {num_tasks * num_classes} outputs, more than max_classes = {max_classes}: "
            "check the experience ids or raise stream.max_classes"
        )


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


def columns_hint(names: list[str]) -> str:
    """The header's columns for an error message, without echoing a file that is not CSV.

    A first line that does not split into several columns is likely no header at all (a text
    file, the wrong delimiter, a file that is not meant to be read): its content is not shown.
    """
    if len(names) < 2:
        return "its first line is not a header of several columns: is it a CSV file with a header line, and is stream.delimiter right?"
    shown = [name if len(name) <= 40 else name[:39] + "…" for name in names[:10]]
    return f"columns: {', '.join(shown)}{f', … ({len(names)} in all)' if len(names) > 10 else ''}"
