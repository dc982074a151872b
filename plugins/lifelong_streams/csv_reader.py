"""The ``csv`` reader: a labelled stream read line by line from a delimited text file.

Format: a header line naming the columns, then one record per line. The ``label`` column holds
the class (any text, compared after trimming spaces), the optional ``experience`` column a
non-negative integer experience id (``2.0`` reads as 2; without the column every row is experience
0), and every other column is a numeric feature. Blank lines
are skipped; the file is read as UTF-8 (a byte-order mark is allowed).

The file is streamed: ``__iter__`` (run on the kernel's reader thread) reads it with the csv module
and yields minibatches of ``batch_size`` rows in file order, cut early where the experience id
changes, so a batch never spans two experiences. Batch offsets are 1-based line numbers (the
header is line 1), half-open. The reader is resumable: it seeks by byte offset and line
(:mod:`lifelong_streams.records`).

Classes: ``classes`` lists the label values in head order. Without it the reader scans the file
once upfront and takes every label of a valid row, sorted (numerically when all labels are
numbers): the model needs the class count before the first batch, which a stream cannot know
otherwise. Give ``classes`` to skip that pass on large files. The task scenario also needs the
number of heads upfront, so it always scans the experience column (``num_tasks`` = largest id + 1).

Scenarios: ``class`` and ``domain`` read the same way (one head; the scenario is recorded in
StreamInfo). ``task`` adds per-sample task ids equal to the experience id; labels index the head of
their task, so ``classes`` is the label set of one head.

Held-out data: with ``test_path`` a second CSV (same feature and label columns, in any order; bad
rows there go to the dead letters too) is read upfront, and ``StreamInfo.experiences`` lists its
experience ids in the order they first appear in it — that order becomes the accuracy matrix's
columns, so write the test file in stream order. Without it, ``experiences`` is None (a stream does
not know its future experiences) and ``test_fraction`` holds out each row whose hash of
(seed, line number) falls below the fraction: the same rows for the same seed, decided per line
without knowing the file's length. An experience's held-out rows are handed to the kernel once the
stream has moved past it (``test_set`` returns None until then).

Bad records never stop the stream: a wrong number of fields, a non-numeric, NaN or infinite
feature, an empty label or one not in ``classes``, an experience id that is not a non-negative
integer, or text the csv module cannot parse go to the dead-letter file with the reason (naming
the column), the file as source, the line number as offset and the raw line as record.

>>> import tempfile
>>> from lifelong.readers import DeadLetters, ReaderContext
>>> path = tempfile.mkdtemp() + "/stream.csv"
>>> _ = open(path, "w").write("a,b,label,exp\\n1,2,cat,0\\n3,x,dog,0\\n5,6,dog,1\\n")
>>> context = ReaderContext(batch_size=8, seed=0, dead_letter=DeadLetters(path + ".dl"))
>>> reader = csv_reader(CsvOptions(path=path, experience="exp"), context)
>>> reader.info().class_names, [(b.experience, b.y.tolist(), b.start, b.stop) for b in reader]
(['cat', 'dog'], [(0, [0], 2, 3), (1, [1], 4, 5)])
>>> context.dead_letter.count
1
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from lifelong.errors import ConfigError, UserError
from lifelong.readers import ReaderContext
from lifelong_streams.records import BadRecord, Lines, Position, RecordStream, check_options, label_order


@dataclass
class CsvOptions:
    path: str = field(default="", metadata={"help": "the CSV file; its header names the columns (required)"})
    label: str = field(default="label", metadata={"help": "label column; every column but label and experience is a numeric feature"})
    experience: str = field(default="", metadata={"help": "experience id column (non-negative integers); empty: all rows are experience 0"})
    test_path: str = field(default="", metadata={"help": "held-out CSV with the same columns, read upfront; empty: hold out test_fraction"})
    test_fraction: float = field(default=0.0, metadata={"help": "share of rows held out for evaluation, chosen by hash of (seed, line)"})
    scenario: Literal["class", "task", "domain"] = field(default="class", metadata={"help": "class, task (task id = experience id) or domain incremental"})
    classes: list[str] | None = field(default=None, metadata={"help": "label values in head order; default: scan the file upfront"})
    delimiter: str = field(default=",", metadata={"help": "field delimiter, one character"})

    def check(self) -> None:
        check_options(self, "column")
        if self.label == self.experience:
            raise ValueError(f"label and experience name the same column {self.label!r}")


@dataclass
class Record:
    line: int  # 1-based line where the record starts
    raw: str
    fields: list[str] | None  # None when the csv module could not parse the text
    after: Position  # where the next record starts
    error: str = ""


@dataclass
class Columns:
    """Where the label, experience and features sit in one file's records."""

    width: int
    label: int
    experience: int | None
    features: list[int]
    names: list[str]

    @staticmethod
    def from_header(header: list[str], options: CsvOptions, source: str, features: list[str] | None = None) -> Columns:
        """Locate the columns; ``features`` (the training file's feature names) fixes their order in a test file."""
        names = [h.strip() for h in header]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise UserError(f"{source!r}: column {name!r} appears twice in the header")
            seen.add(name)
        if options.label not in seen:
            raise UserError(f"{source!r} has no label column {options.label!r} (columns: {', '.join(names)}); set stream.label")
        if options.experience and options.experience not in seen:
            raise UserError(
                f"{source!r} has no experience column {options.experience!r} (columns: {', '.join(names)}); set stream.experience"
            )
        own = [n for n in names if n not in (options.label, options.experience)]
        if not own:
            raise UserError(f"{source!r} has no feature columns besides {options.label!r}: every other column is a feature")
        if features is not None:
            missing = [f for f in features if f not in seen]
            if missing:
                raise UserError(f"{source!r} has no feature column {missing[0]!r}, which the training file has")
            extra = [f for f in own if f not in features]
            if extra:
                raise UserError(f"{source!r} has a column {extra[0]!r} that the training file does not have")
            own = features
        return Columns(
            width=len(names),
            label=names.index(options.label),
            experience=names.index(options.experience) if options.experience else None,
            features=[names.index(f) for f in own],
            names=names,
        )

    def parse(self, fields: list[str], classes: dict[str, int] | None) -> tuple[np.ndarray, str | int, int]:
        """Features, label (its index when ``classes`` is given, else its text) and experience id."""
        if len(fields) != self.width:
            raise BadRecord(f"expected {self.width} fields, got {len(fields)}")
        label = fields[self.label].strip()
        if not label:
            raise BadRecord(f"label column {self.names[self.label]!r} is empty")
        if classes is not None:
            if label not in classes:
                raise BadRecord(f"label {label!r} in column {self.names[self.label]!r} is not one of the classes")
            label = classes[label]
        exp = 0
        if self.experience is not None:
            exp = _experience_id(fields[self.experience], self.names[self.experience])
        try:
            x = np.array([fields[i] for i in self.features], dtype=np.float64)
        except ValueError:
            x = None
        if x is None or not np.isfinite(x).all():
            x = np.array([_feature(fields[i], self.names[i]) for i in self.features])
        return x, label, exp


def _feature(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRecord(f"feature column {column!r} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise BadRecord(f"feature column {column!r} is {text.strip()} (NaN or infinite)")
    return value


def _experience_id(text: str, column: str) -> int:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        raise BadRecord(f"experience column {column!r} is not an integer: {text!r}") from None
    if not value.is_integer() or value < 0:
        raise BadRecord(f"experience column {column!r} is not a non-negative integer: {text!r}")
    return int(value)


def read_header(source: str, delimiter: str) -> list[str]:
    if not Path(source).is_file():
        raise UserError(f"csv file {source!r} does not exist (stream.path or stream.test_path)")
    try:
        with open(source, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f, delimiter=delimiter), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"csv file {source!r}: cannot read its header line: {exc}") from None
    if not header:
        raise UserError(f"csv file {source!r} is empty: expected a header line naming the columns")
    return header


def records(source: str, delimiter: str, start: Position | None = None) -> Iterator[Record]:
    """Every record after the header (or from ``start``), with its line number, raw text and the
    position after it; blank lines are skipped."""
    with open(source, "rb") as handle:
        lines = Lines(handle, start)
        reader = csv.reader(lines, delimiter=delimiter)
        if start is None:
            next(reader, None)  # the header
            lines.take()
        while True:
            line = lines.line
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Record(line, lines.take(), None, lines.position(), f"unparseable CSV: {exc}")
                continue
            raw = lines.take()
            if fields:
                yield Record(line, raw, fields, lines.position())


class CsvStream(RecordStream):
    """The reader; see the module docstring for the format and behaviour."""

    def __init__(self, options: CsvOptions, context: ReaderContext):
        if not options.path:
            raise ConfigError("stream.path", "missing: name the CSV file to read")
        self.options = options
        self.context = context
        self.source = str(Path(options.path).expanduser())
        self.columns = Columns.from_header(read_header(self.source, options.delimiter), options, self.source)
        self.task = options.scenario == "task"
        classes, max_experience = self._scan()
        self.classes = {name: i for i, name in enumerate(classes)}
        self.num_tasks = max_experience + 1 if self.task else 1
        test_source = str(Path(options.test_path).expanduser()) if options.test_path else ""
        features = [self.columns.names[i] for i in self.columns.features]
        self._set_up((len(features),), classes, test_source, features)

    def _scan(self) -> tuple[list[str], int]:
        """The classes (given, or every label of a valid row) and the largest experience id (task scenario)."""
        given = self.options.classes
        if given is not None and not self.task:
            return list(given), 0
        index = {name: i for i, name in enumerate(given)} if given is not None else None
        labels: set[str] = set()
        max_experience = -1
        for record in records(self.source, self.options.delimiter):
            if record.fields is None:
                continue
            try:
                _, label, exp = self.columns.parse(record.fields, index)
            except BadRecord:
                continue  # reported when the stream reaches it
            labels.add(label)  # type: ignore[arg-type]
            max_experience = max(max_experience, exp)
        if max_experience < 0:
            raise UserError(f"csv file {self.source!r} has no valid rows, so its classes cannot be known")
        return (list(given) if given is not None else label_order(labels)), max_experience

    def _parsed(
        self, source: str, start: Position | None = None, quiet: bool = False
    ) -> Iterator[tuple[int, np.ndarray | None, int, int, Position]]:
        columns = self.columns
        if source != self.source:  # the test file: its own header, the training file's feature order
            header = read_header(source, self.options.delimiter)
            columns = Columns.from_header(header, self.options, source, [self.columns.names[i] for i in self.columns.features])
        for record in records(source, self.options.delimiter, start):
            try:
                if record.fields is None:
                    raise BadRecord(record.error)
                x, y, exp = columns.parse(record.fields, self.classes)
                if exp >= self.num_tasks and self.task:
                    raise BadRecord(f"experience id {exp} has no task head (the training file has {self.num_tasks} tasks)")
            except BadRecord as bad:
                if not quiet:
                    self.context.dead_letter(str(bad), source, record.line, record.raw)
                yield record.line, None, -1, -1, record.after
                continue
            yield record.line, x, y, exp, record.after  # type: ignore[misc]


def csv_reader(options: CsvOptions, context: ReaderContext) -> CsvStream:
    return CsvStream(options, context)
