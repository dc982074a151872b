"""The ``csv`` reader: a stream read line by line from a delimited text file, labelled or not.

Format: a header line naming the columns, then one record per physical line (a quoted field may
not hold a line break: numeric features and class labels never need one). The ``label`` column
holds the class (compared after trimming spaces), the optional ``experience`` column a
non-negative integer experience id (``2.0`` reads as 2; without the column every row is experience
0), and every other column is a numeric feature. Blank lines are skipped; the file is read as
UTF-8 (a byte-order mark is allowed).

Labels are optional. With ``label = ""``, or when the header has no column named ``label``, the
stream is **unlabeled** (for anomaly detectors, which learn without labels): every column but the
experience column is a feature, batches carry ``NO_LABEL`` (-1) in ``y``, ``StreamInfo.labels`` is
False, and the head is described as ``num_classes = 2``, ``class_names = ["normal", "anomaly"]``
(or the declared ``classes``). A missing label column is announced in one line on stderr, and a
header column that differs from ``label`` only in case or spaces (``Label`` for ``label``) is
refused (UserError), since it is far more likely the label than a feature; so is a header of one
column without the label column (often no header at all; ``label = ""`` reads such a file). A ``test_path`` file of
an unlabeled stream may have the label column: its labels are then class numbers 0 (normal) and
1 (anomaly), or the declared ``classes``; without it its rows hold -1. A labelled stream's test
file must have the label column.

The file is streamed: ``__iter__`` (run on the kernel's reader thread) reads it with the csv module
and yields minibatches of ``batch_size`` rows in file order, cut early where the experience id
changes, so a batch never spans two experiences. Batch offsets are 1-based line numbers (the
header is line 1), half-open. The reader is resumable: it seeks by byte offset and line
(:mod:`lifelong_streams.records`).

Classes: ``classes`` lists the label values in head order; a label not among them is a dead
letter. Without it the reader scans the file once upfront (the model needs the class count before
the first batch, which a stream cannot know otherwise), and the scan fixes the classes under this
label policy (:mod:`lifelong_streams.records`): when more than half of the valid rows have an
integer label, the column holds class numbers — the classes are its non-negative integers in
numeric order (``3``, ``03`` and ``3.0`` are one class), and a row whose label is not a
non-negative integer (``cat``, ``3.5``, ``-1``) is a dead letter; otherwise every non-empty label
is a class, sorted as text (numerically when all are numbers). More than ``max_classes`` classes
(default 1000) is refused before training: a label column with that many values is almost always
an id or a measurement. The scan prints one line naming the classes and the rows it will reject.
Give ``classes`` to skip that pass on large files, or to accept labels the policy rejects. The
task scenario also needs the number of heads upfront, so it always scans the experience column
(``num_tasks`` = largest id + 1; heads × classes beyond ``max_classes`` are refused).

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

Scaling: ``normalize = "standard"`` standardises every feature with running statistics kept
inside the model (:mod:`lifelong.scaling`): updated from each trained stream row once, frozen
into each generation, and applied by the served model to the raw features it receives.

Bad records never stop the stream: a wrong number of fields; a feature that is not a number, NaN,
infinite, or beyond float32's range (±3.4e38: ``1e308`` is finite in float64 but infinite once cast
to the training dtype, and one such value turns every weight into NaN); an empty label, one not in
``classes`` or one the label policy rejects; an experience id that is not a non-negative integer
below 2^53; bytes that are not valid UTF-8; a quote left open at the end of its line (only that
line is dropped: reading resynchronises at the next line, so one stray quote never swallows the
rows after it); or other text the csv module cannot parse go to the dead-letter file with the
reason (naming the column), the file as source, the line number as offset and the raw line as
record.

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
from typing import Any, Iterator, Literal

import numpy as np

from lifelong.errors import ConfigError, UserError
from lifelong.objective import NO_LABEL
from lifelong.readers import ReaderContext
from lifelong.scaling import normalize_value
from lifelong_streams.records import (
    columns_hint,
    FLOAT32_MAX,
    MAX_CLASSES,
    BadRecord,
    Continued,
    Labels,
    LabelScan,
    Lines,
    Position,
    RecordStream,
    check_options,
    check_task_heads,
    clip,
    say,
    short,
)

MAX_EXPERIENCE = 2**53  # experience ids must be below this (exact in float64, which parses them)
ANOMALY_CLASSES = ["normal", "anomaly"]  # the head an unlabeled stream describes (see the module docstring)


@dataclass
class CsvOptions:
    path: str = field(default="", metadata={"help": "the CSV file; its header names the columns (required)"})
    label: str = field(default="label", metadata={"help": "label column; every column but label and experience is a numeric feature. Empty, or a header without this column: an unlabeled stream (y = -1, for anomaly detectors)"})
    experience: str = field(default="", metadata={"help": "experience id column (non-negative integers); empty: all rows are experience 0"})
    test_path: str = field(default="", metadata={"help": "held-out CSV with the same columns, read upfront; empty: hold out test_fraction"})
    test_fraction: float = field(default=0.0, metadata={"help": "share of rows held out for evaluation, chosen by hash of (seed, line)"})
    scenario: Literal["class", "task", "domain"] = field(default="class", metadata={"help": "class, task (task id = experience id) or domain incremental"})
    classes: list[str] | None = field(default=None, metadata={"help": "label values in head order; default: scan the file upfront"})
    delimiter: str = field(default=",", metadata={"help": "field delimiter, one character"})
    max_classes: int = field(default=MAX_CLASSES, metadata={"help": "most classes a scanned label column may hold (more is refused: usually an id column); declared classes are not limited"})
    normalize: Literal["none", "standard"] = field(default="none", metadata={"help": "input scaling: standard keeps running per-feature mean and variance inside the model (frozen into each generation, applied when served); none: raw features"})

    def check(self) -> None:
        check_options(self, "column")
        if self.label and self.label == self.experience:
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
    label: int | None  # None: the file has no label column (an unlabeled stream, or unlabeled test data)
    experience: int | None
    features: list[int]
    names: list[str]

    @staticmethod
    def from_header(
        header: list[str], options: CsvOptions, source: str, features: list[str] | None = None, require_label: bool = False
    ) -> Columns:
        """Locate the columns; ``features`` (the training file's feature names) fixes their order in a
        test file. Without the label column the file is unlabeled, unless ``require_label``."""
        names = [h.strip() for h in header]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise UserError(f"{source!r}: column {name!r} appears twice in the header")
            seen.add(name)
        label = options.label
        if label and label not in seen:
            near = [n for n in names if n.lower() == label.strip().lower()]
            if near:
                raise UserError(
                    f"{source!r} has no label column {label!r} but a column {near[0]!r}: set stream.label = {near[0]!r} "
                    f"(or stream.label = \"\" to read {near[0]!r} as a feature of an unlabeled stream)"
                )
            if require_label or len(names) < 2:
                # One column is no header at all as often as a one-feature stream: refuse it (the hint
                # never echoes such a line); an explicit label = "" reads a one-column file.
                raise UserError(
                    f"{source!r} has no label column {label!r} ({columns_hint(names)})"
                    + ("" if len(names) < 2 else ", and the training data has labels")
                    + "; set stream.label"
                )
            label = ""
        if options.experience and options.experience not in seen:
            raise UserError(
                f"{source!r} has no experience column {options.experience!r} ({columns_hint(names)}); set stream.experience"
            )
        own = [n for n in names if n not in (label, options.experience)]
        if not own:
            raise UserError(f"{source!r} has no feature columns besides {label or options.experience!r}: every other column is a feature")
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
            label=names.index(label) if label else None,
            experience=names.index(options.experience) if options.experience else None,
            features=[names.index(f) for f in own],
            names=names,
        )

    def parse(self, fields: list[str], labels: Labels | None) -> tuple[np.ndarray, str | int, int]:
        """float32 features, label (its class index under ``labels``, else its text; NO_LABEL without a
        label column) and experience id."""
        if len(fields) != self.width:
            raise BadRecord(f"expected {self.width} fields, got {len(fields)}")
        label: str | int = NO_LABEL
        if self.label is not None:
            label = fields[self.label].strip()
            if not label:
                raise BadRecord(f"label column {self.names[self.label]!r} is empty")
            if labels is not None:
                label = labels(label)
        exp = 0
        if self.experience is not None:
            exp = _experience_id(fields[self.experience], self.names[self.experience])
        return feature_values([fields[i] for i in self.features], [self.names[i] for i in self.features]), label, exp


def feature_values(fields: list[str], names: list[str]) -> np.ndarray:
    """The float32 values of ``fields``, or BadRecord naming the first column (of ``names``) that is
    not a finite float32 number. One vectorised parse on the common path; the slow one only to name
    the bad column."""
    try:
        x = np.array(fields, dtype=np.float64)
    except ValueError:
        x = None
    if x is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = x.astype(np.float32)
        if np.isfinite(x32).all():
            return x32
    return np.array([_feature(text, name) for text, name in zip(fields, names)], dtype=np.float32)


def _feature(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRecord(f"feature column {column!r} is not a number: {short(text)}") from None
    if not math.isfinite(value):
        raise BadRecord(f"feature column {column!r} is {clip(text.strip())} (NaN or infinite)")
    if abs(value) > FLOAT32_MAX and not _fits_float32(value):
        raise BadRecord(f"feature column {column!r} is {value:g}, beyond float32's range (±3.4e38)")
    return value


def _fits_float32(value: float) -> bool:
    """Whether ``value`` stays finite when cast to float32 (values just above the largest round down to it)."""
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(value)))


def _experience_id(text: str, column: str) -> int:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        raise BadRecord(f"experience column {column!r} is not an integer: {short(text)}") from None
    if not value.is_integer() or not 0 <= value < MAX_EXPERIENCE:
        raise BadRecord(f"experience column {column!r} is not a non-negative integer below 2^53: {short(text)}")
    return int(value)


def read_header(source: str, delimiter: str) -> list[str]:
    """The header: the first physical line (after a byte-order mark), parsed as one CSV record."""
    if not Path(source).is_file():
        raise UserError(f"csv file {source!r} does not exist (stream.path or stream.test_path)")
    try:
        with open(source, "rb") as handle:
            lines = Lines(handle)
            lines.single = True
            header = next(csv.reader(lines, delimiter=delimiter), None)
            error = lines.utf8_error
    except Continued:
        raise UserError(f"csv file {source!r}: its header line has a quote that is not closed") from None
    except (OSError, csv.Error) as exc:
        raise UserError(f"csv file {source!r}: cannot read its header line: {exc}") from None
    if error:
        raise UserError(f"csv file {source!r}: its header line is {error}")
    if not header:
        raise UserError(f"csv file {source!r} is empty: expected a header line naming the columns")
    return header


def records(source: str, delimiter: str, start: Position | None = None, width: int | None = None) -> Iterator[Record]:
    """Every record after the header (or from ``start``), with its line number, raw text and the
    position after it; blank lines are skipped.

    A record is one physical line, unless ``width`` is given (the text reader, whose texts may hold
    line breaks in quoted fields). Then a record may span lines, but only as well-formed CSV: it is
    parsed strictly (a closing quote must be followed by the delimiter or the line end), and one
    that spans lines but fails to parse, ends inside a quote at the end of the file, or has not
    ``width`` fields is taken to be a stray quote. (Leniently parsed, a stray quote is closed by the
    opening quote of a later good record, and the rest of that line often gives the right width by
    accident, swallowing every record in between.) Either way a quote left open dead-letters one
    physical line, and reading resynchronises at the next line boundary. A record on one line keeps
    the csv module's lenient reading (``"a"b`` reads as ``ab``).
    """
    with open(source, "rb") as handle:
        lines = Lines(handle, start)
        reader = csv.reader(lines, delimiter=delimiter, strict=width is not None)
        if start is None:
            lines.single = True
            try:
                next(reader, None)  # the header (read_header has checked it)
            except (Continued, csv.Error):
                pass
            lines.take()
        lines.single = width is None
        while True:
            line = lines.line
            error = ""
            try:
                fields: list[str] | None = next(reader)
            except StopIteration:
                return
            except Continued:
                fields, error = None, "a quote is not closed by the end of the line (a record is one line)"
            except csv.Error as exc:
                fields, error = None, f"unparseable CSV: {exc}"
                if width is not None and len(lines.taken) == 1 and not lines.ended:
                    fields, error = _one_line(lines.taken[0], delimiter, fields, error)
            if len(lines.taken) > 1 and (fields is None or lines.ended or len(fields) != width):
                if fields is None:
                    why = f"does not parse ({error.removeprefix('unparseable CSV: ')})"
                else:
                    why = "runs to the end of the file" if lines.ended else f"has {len(fields)} fields, not {width}"
                spanned = len(lines.taken)
                raw = lines.give_back()
                reason = f"a quote is not closed by the end of the line (read on over {spanned} lines, the record {why})"
                yield Record(line, raw, None, lines.position(), reason)
                continue
            if fields is not None and lines.ended:
                fields, error = None, "a quote is not closed by the end of the file"
            if fields is not None and lines.utf8_error:
                fields, error = None, lines.utf8_error
            raw = lines.take()
            if fields is None:
                yield Record(line, raw, None, lines.position(), error)
            elif fields:
                yield Record(line, raw, fields, lines.position())


class _OneLine:
    """One line for a csv reader; asking for another raises Continued."""

    def __init__(self, text: str):
        self.text: str | None = text

    def __iter__(self) -> _OneLine:
        return self

    def __next__(self) -> str:
        if self.text is None:
            raise Continued
        text, self.text = self.text, None
        return text


def _one_line(text: str, delimiter: str, fields: list[str] | None, error: str) -> tuple[list[str] | None, str]:
    """A line the strict parser refused, read leniently on its own: its fields, or the strict error."""
    try:
        return next(csv.reader(_OneLine(text), delimiter=delimiter)), ""
    except (Continued, csv.Error, StopIteration):
        return fields, error


class CsvStream(RecordStream):
    """The reader; see the module docstring for the format and behaviour."""

    def __init__(self, options: CsvOptions, context: ReaderContext):
        if not options.path:
            raise ConfigError("stream.path", "missing: name the CSV file to read")
        self.options = options
        self.context = context
        self.source = str(Path(options.path).expanduser())
        self.columns = Columns.from_header(read_header(self.source, options.delimiter), options, self.source)
        self.labelled = self.columns.label is not None
        if not self.labelled and options.label:
            say(f"csv {self.source!r} has no label column {options.label!r}: an unlabeled stream (y = -1), which only a detector trains on")
        self.task = options.scenario == "task"
        self._column = f"column {options.label!r}"
        classes, integers, max_experience = self._scan()
        self.labels = Labels(classes, integers, self._column)
        self.num_tasks = max_experience + 1 if self.task else 1
        if self.task and options.classes is not None:
            check_task_heads(self.num_tasks, len(classes), options.max_classes, f"csv file {self.source!r}")
        test_source = str(Path(options.test_path).expanduser()) if options.test_path else ""
        features = [self.columns.names[i] for i in self.columns.features]
        self._set_up((len(features),), classes, test_source, features)
        self._info.normalize = normalize_value(options.normalize)  # see lifelong.scaling
        if not self.labelled:
            self._info.labels = False
            if options.classes is None:
                self._info.class_names = list(ANOMALY_CLASSES)

    def _scan(self) -> tuple[list[str], bool, int]:
        """The classes (given, or scanned under the label policy), whether the column holds class
        numbers, and the largest experience id (task scenario)."""
        given = self.options.classes
        what = f"csv file {self.source!r}, label column {self.options.label!r}"
        if not self.labelled:
            # Only test data can carry labels: 0 (normal) and 1 (anomaly) as class numbers, unless declared.
            classes, integers = (list(given), False) if given is not None else (["0", "1"], True)
            return classes, integers, self._largest_experience() if self.task else 0
        if given is not None and not self.task:
            return list(given), False, 0
        labels = Labels(list(given), False, self._column) if given is not None else None
        scan = LabelScan(self.options.max_classes)
        max_experience, largest_at = -1, 0
        for label, exp, line in self._valid_rows(labels):
            if labels is None:
                scan.add(label)  # type: ignore[arg-type]
                if scan.full():
                    break
            if exp > max_experience:
                max_experience, largest_at = exp, line
        if max_experience < 0:
            raise UserError(f"csv file {self.source!r} has no valid rows, so its classes cannot be known")
        if given is not None:
            return list(given), False, max_experience
        names, integers = scan.classes(what)
        if self.task:
            check_task_heads(max_experience + 1, len(names), self.options.max_classes, f"{what} (experience id at line {largest_at})")
        scan.report(f"csv {self.source!r}")
        return names, integers, max_experience

    def _valid_rows(self, labels: Labels | None) -> Iterator[tuple[Any, int, int]]:
        """(label, experience, line) of every valid row of the training file; bad rows are reported when
        the stream reaches them."""
        for record in records(self.source, self.options.delimiter):
            if record.fields is None:
                continue
            try:
                _, label, exp = self.columns.parse(record.fields, labels)
            except BadRecord:
                continue
            yield label, exp, record.line

    def _largest_experience(self) -> int:
        """The largest experience id of an unlabeled file's valid rows (the task scenario's heads)."""
        largest = max((exp for _, exp, _ in self._valid_rows(None)), default=-1)
        if largest < 0:
            raise UserError(f"csv file {self.source!r} has no valid rows, so its experiences cannot be known")
        return largest

    def _parsed(
        self, source: str, start: Position | None = None, quiet: bool = False
    ) -> Iterator[tuple[int, np.ndarray | None, int, int, Position]]:
        columns = self.columns
        if source != self.source:  # the test file: its own header, the training file's feature order
            header = read_header(source, self.options.delimiter)
            features = [self.columns.names[i] for i in self.columns.features]
            columns = Columns.from_header(header, self.options, source, features, require_label=self.labelled)
        for record in records(source, self.options.delimiter, start):
            try:
                if record.fields is None:
                    raise BadRecord(record.error)
                x, y, exp = columns.parse(record.fields, self.labels)
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
