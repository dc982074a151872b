"""The ``text`` reader: labelled texts streamed from a JSONL or CSV file, as zero-padded UTF-8 bytes.

Format: JSON Lines (one object per line) or CSV with a header line (``format = "auto"`` decides by
the extension: ``.jsonl``/``.ndjson``/``.json`` are JSON Lines, anything else CSV). The ``text`` field
holds the text, ``label`` the class (a string or an integer, compared as text after trimming), the
optional ``experience`` field a non-negative integer experience id. Other fields are ignored.

Each sample is the text's UTF-8 bytes, cut at ``max_bytes`` on a character boundary and zero-padded,
in a uint8 tensor of shape (N, max_bytes): text models tokenize in their ``prepare_host``, on the
kernel's reader thread (see :mod:`lifelong_transfer.text` for why bytes). NUL characters in a text become spaces (NUL is
the padding).

Everything else follows the ``csv`` reader (:mod:`lifelong_streams.csv_reader`): batches of
``batch_size`` in file order, cut where the experience changes; offsets are 1-based line numbers
(the CSV header is line 1); ``classes`` in head order or scanned from the file; the task scenario
scans the experience field for the number of heads; held-out data from ``test_path`` (read
upfront; its experience ids in first-seen order are the accuracy matrix's columns) or a
``test_fraction`` chosen by hash of (seed, line), handed over once the stream has moved past the
experience. The label policy is the csv reader's (:mod:`lifelong_streams.records`): without
``classes`` the upfront scan fixes the classes; when more than half of the valid records have an
integer label (a JSON number like ``3`` or ``3.0``, or text like ``"3"``) the field holds class
numbers and a label that is not a non-negative integer (``"cat"``, ``3.5``, ``-1``) is a dead
letter; otherwise every non-empty label is a class, compared as text; more than ``max_classes``
classes (default 1000) is refused before training. Features are bytes, so no value can overflow
the training dtype.

Bad records — unparseable JSON or CSV, a line that is not a JSON object, bytes that are not valid
UTF-8, a missing, non-text or empty text, a missing, empty, NaN or infinite label, one not in
``classes`` or one the label policy rejects, a bad experience id — go to the dead-letter file with
the reason, the file, the line number and the raw line. In a CSV file a quoted text may span lines;
a quote left open dead-letters its first physical line only, and reading resynchronises at the next
line (see :func:`lifelong_streams.csv_reader.records`).

>>> import tempfile, json
>>> from lifelong.readers import DeadLetters, ReaderContext
>>> path = tempfile.mkdtemp() + "/reviews.jsonl"
>>> rows = [{"text": "great", "label": "pos"}, {"text": "", "label": "neg"}, {"text": "awful", "label": "neg"}]
>>> _ = open(path, "w").write("\\n".join(json.dumps(r) for r in rows))
>>> context = ReaderContext(batch_size=8, seed=0, dead_letter=DeadLetters(path + ".dl"))
>>> reader = text_reader(TextOptions(path=path, max_bytes=8), context)
>>> batch = next(iter(reader))
>>> reader.info().class_names, batch.x.dtype, batch.x.shape, bytes(batch.x[0].tolist()), batch.y.tolist()
(['neg', 'pos'], torch.uint8, torch.Size([2, 8]), b'great\\x00\\x00\\x00', [1, 0])
>>> context.dead_letter.count
1
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from lifelong_streams.csv_reader import MAX_EXPERIENCE, read_header, records
from lifelong_streams.records import (
    columns_hint,
    MAX_CLASSES,
    BadRecord,
    Labels,
    LabelScan,
    Lines,
    Position,
    RecordStream,
    check_options,
    check_task_heads,
    clip,
    short,
)

from lifelong.errors import ConfigError, UserError
from lifelong.readers import ReaderContext

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass
class TextOptions:
    path: str = field(default="", metadata={"help": "the JSONL or CSV file (required)"})
    format: Literal["auto", "jsonl", "csv"] = field(default="auto", metadata={"help": "auto: by extension (.jsonl/.ndjson/.json: JSON Lines, else CSV)"})
    text: str = field(default="text", metadata={"help": "field holding the text"})
    label: str = field(default="label", metadata={"help": "field holding the class"})
    experience: str = field(default="", metadata={"help": "experience id field (non-negative integers); empty: all experience 0"})
    test_path: str = field(default="", metadata={"help": "held-out file in the same format, read upfront; empty: hold out test_fraction"})
    test_fraction: float = field(default=0.0, metadata={"help": "share of records held out for evaluation, chosen by hash of (seed, line)"})
    scenario: Literal["class", "task", "domain"] = field(default="class", metadata={"help": "class, task (task id = experience id) or domain incremental"})
    classes: list[str] | None = field(default=None, metadata={"help": "label values in head order; default: scan the file upfront"})
    max_bytes: int = field(default=512, metadata={"help": "UTF-8 bytes kept per text (cut on a character boundary, zero-padded)"})
    delimiter: str = field(default=",", metadata={"help": "CSV field delimiter, one character"})
    max_classes: int = field(default=MAX_CLASSES, metadata={"help": "most classes a scanned label field may hold (more is refused: usually an id field); declared classes are not limited"})

    def check(self) -> None:
        check_options(self, "field")
        if len({self.text, self.label, self.experience} - {""}) != (3 if self.experience else 2):
            raise ValueError("text, label and experience must name different fields")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")


def encode(text: str, max_bytes: int) -> np.ndarray:
    """``text`` as UTF-8, cut at ``max_bytes`` on a character boundary and zero-padded (uint8)."""
    data = text.replace("\x00", " ").encode("utf-8")
    if len(data) > max_bytes:
        data = data[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")
    out = np.zeros(max_bytes, dtype=np.uint8)
    out[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out


def _label_text(value: Any, name: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise BadRecord(f"label field {name!r} is {clip(json.dumps(value))}, not a class name or number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRecord(f"label field {name!r} is {value}, not a class name or number")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise BadRecord(f"label field {name!r} is empty")
    return text


def _experience(value: Any, name: str) -> int:
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise BadRecord(f"experience field {name!r} is not an integer: {short(value)}") from None
    except OverflowError:  # a JSON integer beyond float's range
        raise BadRecord(f"experience field {name!r} is not a non-negative integer below 2^53: {short(value)}") from None
    if isinstance(value, bool) or not number.is_integer() or number < 0:
        raise BadRecord(f"experience field {name!r} is not a non-negative integer: {short(value)}")
    if number >= MAX_EXPERIENCE:
        raise BadRecord(f"experience field {name!r} is not a non-negative integer below 2^53: {short(value)}")
    return int(number)


class TextStream(RecordStream):
    """The reader; see the module docstring."""

    x_dtype = np.uint8

    def __init__(self, options: TextOptions, context: ReaderContext):
        if not options.path:
            raise ConfigError("stream.path", "missing: name the JSONL or CSV file to read")
        self.options = options
        self.context = context
        self.source = str(Path(options.path).expanduser())
        self.task = options.scenario == "task"
        self._check_file(self.source)
        self._column = f"field {options.label!r}"
        classes, integers, max_experience = self._scan()
        self.class_list = classes
        self.labels = Labels(classes, integers, self._column)
        self.num_tasks = max_experience + 1 if self.task else 1
        if self.task and options.classes is not None:
            check_task_heads(self.num_tasks, len(classes), options.max_classes, f"text file {self.source!r}")
        test_source = str(Path(options.test_path).expanduser()) if options.test_path else ""
        if test_source:
            self._check_file(test_source)
        self._set_up((options.max_bytes,), classes, test_source)

    # -- files -------------------------------------------------------------------------------
    def _jsonl(self, source: str) -> bool:
        if self.options.format != "auto":
            return self.options.format == "jsonl"
        return Path(source).suffix.lower() in JSONL_SUFFIXES

    def _check_file(self, source: str) -> None:
        if not Path(source).is_file():
            raise UserError(f"text file {source!r} does not exist (stream.path or stream.test_path)")
        if self._jsonl(source):
            return
        header = read_header(source, self.options.delimiter)
        for name in (self.options.text, self.options.label, self.options.experience):
            if name and name not in header:
                raise UserError(f"{source!r} has no column {name!r} ({columns_hint(header)})")

    def _records(
        self, source: str, start: Position | None = None
    ) -> Iterator[tuple[int, str, dict[str, Any] | None, str, Position]]:
        """(line, raw text, fields or None, error, position after it) of every record, from ``start``."""
        if not self._jsonl(source):
            header = read_header(source, self.options.delimiter)
            for record in records(source, self.options.delimiter, start, width=len(header)):
                if record.fields is None:
                    yield record.line, record.raw, None, record.error, record.after
                elif len(record.fields) != len(header):
                    yield record.line, record.raw, None, f"expected {len(header)} fields, got {len(record.fields)}", record.after
                else:
                    yield record.line, record.raw, dict(zip(header, record.fields)), "", record.after
            return
        with open(source, "rb") as handle:
            lines = Lines(handle, start)
            for text in lines:
                error = lines.utf8_error
                line, raw = lines.line - 1, lines.take()
                if not raw.strip():
                    continue
                if error:
                    yield line, raw, None, error, lines.position()
                    continue
                try:
                    value = json.loads(raw)
                except ValueError as exc:  # JSONDecodeError, or an integer of more than 4,300 digits
                    yield line, raw, None, f"unparseable JSON: {str(exc)[:120]}", lines.position()
                    continue
                except RecursionError:
                    yield line, raw, None, "unparseable JSON: nested too deeply", lines.position()
                    continue
                if not isinstance(value, dict):
                    yield line, raw, None, f"expected a JSON object, got {type(value).__name__}", lines.position()
                    continue
                yield line, raw, value, "", lines.position()

    def _fields(self, fields: dict[str, Any] | None, error: str) -> tuple[str, str, int]:
        if fields is None:
            raise BadRecord(error)
        o = self.options
        if o.text not in fields:
            raise BadRecord(f"text field {o.text!r} is missing")
        text = fields[o.text]
        if not isinstance(text, str):
            raise BadRecord(f"text field {o.text!r} is {type(text).__name__}, not text")
        if not text.strip():
            raise BadRecord(f"text field {o.text!r} is empty")
        if o.label not in fields:
            raise BadRecord(f"label field {o.label!r} is missing")
        label = _label_text(fields[o.label], o.label)
        exp = 0
        if o.experience:
            if o.experience not in fields:
                raise BadRecord(f"experience field {o.experience!r} is missing")
            exp = _experience(fields[o.experience], o.experience)
        return text, label, exp

    def _scan(self) -> tuple[list[str], bool, int]:
        """The classes (given, or scanned under the label policy), whether the label field holds
        class numbers, and the largest experience id (task scenario)."""
        given = self.options.classes
        if given is not None and not self.task:
            return list(given), False, 0
        scan = LabelScan(self.options.max_classes)
        max_experience, largest_at = -1, 0
        for line, _, fields, error, _ in self._records(self.source):
            try:
                _, label, exp = self._fields(fields, error)
            except BadRecord:
                continue
            if given is not None and label not in given:
                continue
            if given is None:
                scan.add(label)
                if scan.full():
                    break
            if exp > max_experience:
                max_experience, largest_at = exp, line
        if max_experience < 0:
            raise UserError(f"text file {self.source!r} has no valid records, so its classes cannot be known")
        if given is not None:
            return list(given), False, max_experience
        what = f"text file {self.source!r}, label field {self.options.label!r}"
        names, integers = scan.classes(what)
        if self.task:
            check_task_heads(max_experience + 1, len(names), self.options.max_classes, f"{what} (experience id at line {largest_at})")
        scan.report(f"text {self.source!r}")
        return names, integers, max_experience

    def _parsed(
        self, source: str, start: Position | None = None, quiet: bool = False
    ) -> Iterator[tuple[int, np.ndarray | None, int, int, Position]]:
        for line, raw, fields, error, after in self._records(source, start):
            try:
                text, label, exp = self._fields(fields, error)
                y = self.labels(label)
                if self.task and exp >= self.num_tasks:
                    raise BadRecord(f"experience id {exp} has no task head (the training file has {self.num_tasks} tasks)")
            except BadRecord as bad:
                if not quiet:
                    self.context.dead_letter(str(bad), source, line, raw)
                yield line, None, -1, -1, after
                continue
            yield line, encode(text, self.options.max_bytes), y, exp, after


def text_reader(options: TextOptions, context: ReaderContext) -> TextStream:
    return TextStream(options, context)
