"""The ``shuttle`` reader: ODDS Shuttle as river bundles it, a labelled anomaly-detection stream (offline).

river (a dependency of lifelong) ships ``river/datasets/shuttle.csv.gz``: the UCI Statlog Shuttle
data cast as anomaly detection by ODDS, 49,097 records of nine integer sensor readings, 3,511 of
them (7.15 %) anomalies, column ``anomaly`` = 1, else 0. The file is located without importing
``river.datasets`` (which costs over a second) and read whole, in about a second.

Records stream in file order, as one experience or, with ``experience_records = N``, as
consecutive experiences of N records (the last may be shorter). Each experience holds out
``test_size`` of its records (stratified by label, drawn with the run's seed: the same records for
the same seed) as its test set, with 0/1 labels; the rest is trained on in file order, labels
included (a detector ignores them in training, the kernel scores them prequentially).
``test_size = 0`` holds nothing out, for purely prequential (test-then-train) use.

Bad records (a value that is not a finite float32 number, a label that is not 0 or 1, a line that
does not parse) go to the dead-letter file with the line number as offset (see
:mod:`lifelong_streams.tables`); river's file has none, but ``path`` may name another copy.
Resumable by record index (:class:`lifelong_streams.arrays.ArrayStream`).

>>> from lifelong.readers import ReaderContext
>>> stream = shuttle_reader(ShuttleOptions(records=1000, experience_records=500), ReaderContext(batch_size=100, seed=0))
>>> stream.info().input_shape, stream.info().experiences, len(stream.test_set(0))
((9,), [0, 1], 100)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lifelong.errors import UserError
from lifelong.readers import ReaderContext
from lifelong.scaling import normalize_value
from lifelong.types import StreamInfo
from lifelong_streams.arrays import ArrayStream
from lifelong_streams.ordered import ordered_experiences, spans_of
from lifelong_streams.tables import read_table

RECORDS, ANOMALIES = 49_097, 3_511  # river's documented size, checked by the tests
CLASS_NAMES = ["normal", "anomaly"]


@dataclass
class ShuttleOptions:
    experience_records: int = field(default=0, metadata={"help": "records per experience, cut in file order (the last may be shorter); 0: one experience"})
    test_size: float = field(default=0.2, metadata={"help": "share of each experience's records held out as its test set (stratified, seeded); 0: none, for prequential use"})
    records: int = field(default=0, metadata={"help": "read only the first N records of the file; 0: all 49,097"})
    normalize: Literal["none", "standard"] = field(default="none", metadata={"help": "input scaling: standard keeps running per-feature mean and variance inside the model; none: raw sensor values"})
    path: str = field(default="", metadata={"help": "the CSV(.gz) to read, columns f1..f9 and anomaly; empty: river's bundled copy"})

    def check(self) -> None:
        if not 0.0 <= self.test_size < 1.0:
            raise ValueError(f"test_size must be in [0, 1), got {self.test_size}")
        for name in ("experience_records", "records"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or positive, got {getattr(self, name)}")


def river_shuttle_path() -> str:
    """Where river's bundled ``shuttle.csv.gz`` is, found without importing river."""
    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the shuttle reader needs river (a lifelong dependency), which is not installed: pip install 'river>=0.21'")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "shuttle.csv.gz"
    if not path.is_file():
        raise UserError(f"river has no bundled Shuttle data at {path}; install river >= 0.21 or set stream.path")
    return str(path)


def shuttle_reader(options: ShuttleOptions, context: ReaderContext) -> ArrayStream:
    source = str(Path(options.path).expanduser()) if options.path else river_shuttle_path()
    table = read_table(source, context, label="anomaly", limit=options.records)
    if table.y is None:
        raise UserError(f"{source!r} has no label column 'anomaly' (0 normal, 1 anomaly)")
    n = options.records or len(table.ok)
    ok = table.ok[:n]
    x, y, offsets = table.x[:n][ok], table.y[:n][ok], table.offsets[:n][ok]
    if not len(y):
        raise UserError(f"{source!r} has no valid records (see the dead-letter file for why each was rejected)")
    info = StreamInfo(
        input_shape=(x.shape[1],),
        num_classes=2,
        class_names=list(CLASS_NAMES),
        feature_names=list(table.columns),
        normalize=normalize_value(options.normalize),
        labels=True,
    )
    spans = spans_of(len(y), options.experience_records)
    return ordered_experiences(info, x, y, offsets, spans, options.test_size, context.seed, context.batch_size, source)
