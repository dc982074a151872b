"""Numeric tables with optional 0/1 point labels, read whole: what the ``shuttle`` and ``windows`` readers share.

A table is a CSV file (plain or ``.gz``: a header line naming the columns, then one record per
line) or an ``.npz`` archive (``x`` of shape (N,) or (N, C), optional ``y`` of N labels). Labels
are anomaly flags: 0 (normal) or 1 (anomaly); ``0.0`` and ``1.0`` read as 0 and 1. A CSV without
the label column has no labels (announced in one line on stderr); one whose header has the label's
name in another case (``Label`` for ``label``) is refused, as that is far more likely the label.

Bad records never stop the stream and are never silently kept: a line that is not valid UTF-8 or
does not parse, a wrong number of fields, a value that is not a number, NaN, infinite or beyond
float32's range (the training dtype), a label that is not 0 or 1 — each goes to the dead-letter
file with the reason, the file as source, the 1-based line number (CSV) or row index (npz) as
offset and the raw line (CSV) or the label (npz) as record. The row stays in the table, marked
not ``ok``, so a reader of windows knows where the gap is (a window over a gap would be a pattern
the data never had).
"""

from __future__ import annotations

import csv
import gzip
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifelong.errors import UserError
from lifelong.readers import ReaderContext
from lifelong_streams.csv_reader import feature_values
from lifelong_streams.records import BadRecord, columns_hint, say, short


@dataclass
class Table:
    """A table's rows in file order; a bad row holds zeros and is not ``ok``."""

    x: np.ndarray  # (N, C) float32
    y: np.ndarray | None  # (N,) int64 0/1 labels, None when the table has no label column or array
    ok: np.ndarray  # (N,) bool
    offsets: np.ndarray  # (N,) int64: 1-based line numbers (CSV) or row indices (npz)
    columns: list[str]  # the feature names (npz: "0", "1", …)


def read_table(
    source: str, context: ReaderContext, label: str = "label", columns: list[str] | None = None, limit: int = 0
) -> Table:
    """Read ``source`` (CSV, CSV.gz or npz, by its name); ``label``: the label column ("" or absent:
    no labels); ``columns``: the feature columns in order (default: every column but the label);
    ``limit``: the first that many records of a CSV only (0: all)."""
    if not Path(source).is_file():
        raise UserError(f"file {source!r} does not exist (stream.path)")
    if source.endswith(".npz"):
        return _read_npz(source, context)
    return _read_csv(source, context, label, columns, limit)


def _read_csv(source: str, context: ReaderContext, label: str, columns: list[str] | None, limit: int = 0) -> Table:
    opener = gzip.open if source.endswith(".gz") else open
    try:
        with opener(source, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"file {source!r} is not readable: {exc}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    try:
        header = [h.strip() for h in next(csv.reader([lines[0].decode("utf-8")]))] if lines[0].strip() else []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"file {source!r}: its header line does not parse ({exc})") from None
    if not header:
        raise UserError(f"file {source!r} is empty: expected a header line naming the columns")
    if len(set(header)) != len(header):
        raise UserError(f"file {source!r}: a column appears twice in its header ({columns_hint(header)})")
    has_label = bool(label) and label in header
    if label and not has_label:
        near = [h for h in header if h.lower() == label.strip().lower()]
        if near:
            raise UserError(f"file {source!r} has no label column {label!r} but a column {near[0]!r}: set stream.label = {near[0]!r}")
        say(f"{source!r} has no label column {label!r}: an unlabeled series (y = -1)")
    if columns is None:
        columns = [h for h in header if not (has_label and h == label)]
    missing = [c for c in columns if c not in header]
    if missing:
        raise UserError(f"file {source!r} has no column {missing[0]!r} ({columns_hint(header)}); check stream.columns")
    if not columns:
        raise UserError(f"file {source!r} has no value columns besides the label {label!r}")
    where = [header.index(c) for c in columns]
    at = header.index(label) if has_label else None

    rows: list[np.ndarray] = []
    labels: list[int] = []
    ok: list[bool] = []
    numbers: list[int] = []
    zeros = np.zeros(len(columns), dtype=np.float32)
    for number, raw in enumerate(lines[1:], start=2):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue  # blank lines (and the end of the file) are no records
        if limit and len(ok) == limit:
            break
        try:
            fields = _fields(raw)
            if len(fields) != len(header):
                raise BadRecord(f"expected {len(header)} fields, got {len(fields)}")
            x = feature_values([fields[i] for i in where], columns)
            y = _flag(fields[at], label) if at is not None else 0
        except BadRecord as bad:
            context.dead_letter(str(bad), source, number, raw.decode("utf-8", "replace"))
            x, y, good = zeros, 0, False
        else:
            good = True
        rows.append(x)
        labels.append(y)
        ok.append(good)
        numbers.append(number)
    x = np.stack(rows) if rows else np.zeros((0, len(columns)), dtype=np.float32)
    return Table(x, np.array(labels, dtype=np.int64) if at is not None else None, np.array(ok, bool), np.array(numbers, np.int64), columns)


def _fields(raw: bytes) -> list[str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}") from None
    try:
        return next(csv.reader([text]))
    except (csv.Error, StopIteration) as exc:
        raise BadRecord(f"unparseable CSV: {exc}") from None


def _flag(text: str, column: str) -> int:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise BadRecord(f"label column {column!r} is {short(text)}, not 0 (normal) or 1 (anomaly)")
    return int(value)


def _read_npz(source: str, context: ReaderContext) -> Table:
    try:
        with np.load(source, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise UserError(f"{source!r} has no array 'x' (arrays: {', '.join(archive.files) or 'none'})")
            x, y = archive["x"], archive["y"] if "y" in archive.files else None
    except (OSError, ValueError, EOFError, AttributeError, zipfile.BadZipFile) as exc:
        raise UserError(f"{source!r} is not a readable .npz archive: {exc}") from None
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise UserError(f"{source!r}: x must be a numeric array of shape (N,) or (N, channels), got dtype {x.dtype} and shape {x.shape}")
    n = len(x)
    if y is not None and (y.shape != (n,) or y.dtype.kind not in "biuf"):
        raise UserError(f"{source!r}: y must hold one numeric 0/1 label per row of x ({n}), got dtype {y.dtype} and shape {y.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x.astype(np.float32)
    ok = np.isfinite(x32).all(axis=1)
    labels = None
    if y is not None:
        flags = np.isin(y, (0, 1))
        labels = np.where(flags, y, 0).astype(np.int64)
    for i in np.flatnonzero(~ok | (~flags if y is not None else False)).tolist():
        if not ok[i]:
            j = int(np.flatnonzero(~np.isfinite(x32[i]))[0])
            value = float(x[i, j])
            reason = f"x has {value:g} at channel {j}" + (", beyond float32's range (±3.4e38)" if math.isfinite(value) else " (NaN or infinite)")
        else:
            reason = f"label {y[i].item()!r} is not 0 (normal) or 1 (anomaly)"
        context.dead_letter(reason, source, i, {"y": None if y is None else _plain(y[i])})
        ok[i] = False
    x32[~ok] = 0
    return Table(x32, labels, ok, np.arange(n, dtype=np.int64), [str(c) for c in range(x.shape[1])])


def _plain(value: np.generic) -> object:
    value = value.item()
    return repr(value) if isinstance(value, float) and not math.isfinite(value) else value
