"""The ``windows`` and ``ecg`` readers: sliding windows over a time series with point labels.

The series is a CSV file (plain or ``.gz``; a header, one time step per line) or an ``.npz``
archive (``x`` of shape (T,) or (T, channels), optional ``y``), read whole (see
:mod:`lifelong_streams.tables`). ``columns`` names the value columns (default: every column but
the label), ``label`` the point-label column: 1 marks an anomalous point, 0 a normal one. Without
a label column (``label = ""``, or no such column in the header; an npz without ``y``) the stream
is unlabeled: windows carry ``NO_LABEL`` (-1) and ``StreamInfo.labels`` is False.

Windows: ``window`` consecutive points, one every ``stride`` points from the first, as
``x`` of shape (window, channels), float32. **A window is anomalous (label 1) when it contains at
least one anomalous point**, else normal (0). A point that is a bad record (a value that is not a
finite float32 number, a label that is not 0 or 1, a line that does not parse) goes to the
dead-letter file and every window that would contain it is left out: a window across a gap would
be a pattern the series never had. ``Batch.start``/``stop`` name the first point of the batch's
windows (1-based line numbers, or row indices of the npz).

Experiences: the windows, in time order, are cut into ``experiences`` consecutive spans of equal
size. Each holds out ``test_size`` of its windows as its test set; the rest are trained on in time
order. ``test_size = 0`` holds nothing out. Resumable by window index
(:class:`lifelong_streams.arrays.ArrayStream`). ``split`` says which windows are held out:

- ``random``: drawn with the run's seed, stratified by window label (the same ones for the same
  seed). Overlapping windows (``stride < window``) share points, so a test window overlaps
  training windows: a hold-out of the same series, not of unseen data.
- ``tail``: the span's last windows, and the windows that share points with the first of them
  are dropped: no test point is ever trained on. This is how a deployment meets a series (it
  learns the past and flags the future), and the only honest test when the series holds one
  anomaly: with ``random``, most windows over it are trained on as normal.

``ecg`` is the same reader preconfigured on sktime's MIT-BIH excerpt (7,500 points of one ECG
lead at 360 Hz, 352 of them one annotated anomaly; bundled in ``data/mitdb.csv``, see
``data/README.md``), with defaults chosen for it: windows of 512 points every 4, and the last 30 %
held out (``split = "tail"``). The anomaly (points 6,936-7,287) is a beat with the amplitude of the
others, early, followed by a long pause: a window must span more than one beat (~290 points) to
see it, and with ``random`` most windows over it are trained on as normal. The last 30 % hold the
141 windows over the anomaly and 384 normal ones, on which the false-alarm rate is measured (20 %
would leave 209).

>>> from lifelong.readers import ReaderContext
>>> stream = ecg_reader(EcgOptions(), ReaderContext(batch_size=64, seed=0))
>>> stream.info().input_shape, stream.info().class_names
((512, 1), ['normal', 'anomaly'])
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from lifelong.errors import ConfigError, UserError
from lifelong.objective import NO_LABEL
from lifelong.readers import ReaderContext
from lifelong.scaling import normalize_value
from lifelong.types import StreamInfo
from lifelong_streams.arrays import ArrayStream
from lifelong_streams.ordered import ordered_experiences
from lifelong_streams.tables import Table, read_table

CLASS_NAMES = ["normal", "anomaly"]
MAX_BYTES = 2**31  # windows are materialised upfront: refuse more than 2 GiB of them
BUNDLED_ECG = Path(__file__).parent / "data" / "mitdb.csv"


@dataclass
class WindowsOptions:
    path: str = field(default="", metadata={"help": "the series: a CSV(.gz) with a header, one time step per line, or an .npz with x (T,) or (T, channels) and optional y (required)"})
    columns: list[str] | None = field(default=None, metadata={"help": "value columns of a CSV, in order; default: every column but the label"})
    label: str = field(default="label", metadata={"help": "point-label column (1 anomaly, 0 normal); empty or absent from the header: an unlabeled series (windows carry y = -1)"})
    window: int = field(default=64, metadata={"help": "points per window"})
    stride: int = field(default=1, metadata={"help": "points from one window's start to the next"})
    experiences: int = field(default=1, metadata={"help": "the windows, in time order, cut into this many consecutive experiences of equal size"})
    test_size: float = field(default=0.2, metadata={"help": "share of each experience's windows held out as its test set; 0: none"})
    split: Literal["random", "tail"] = field(default="random", metadata={"help": "which windows are held out: random (stratified by window label, seeded) or tail (the experience's last ones, after a gap of the windows that share points with them: train on the past, test on the future)"})
    normalize: Literal["none", "standard"] = field(default="none", metadata={"help": "input scaling: standard keeps running per-element mean and variance inside the model; none: raw values"})

    def check(self) -> None:
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"window and stride must be at least 1, got window = {self.window}, stride = {self.stride}")
        if self.experiences < 1:
            raise ValueError(f"experiences must be at least 1, got {self.experiences}")
        if not 0.0 <= self.test_size < 1.0:
            raise ValueError(f"test_size must be in [0, 1), got {self.test_size}")
        if self.columns is not None and (not self.columns or len(set(self.columns)) != len(self.columns)):
            raise ValueError(f"columns must list distinct column names, got {self.columns}")
        if self.label and self.columns is not None and self.label in self.columns:
            raise ValueError(f"the label column {self.label!r} is also among the value columns")


@dataclass
class EcgOptions(WindowsOptions):
    path: str = field(default="", metadata={"help": "the MIT-BIH excerpt (columns data, label); empty: the bundled copy, else an installed sktime's"})
    window: int = field(default=512, metadata={"help": "points per window: 512 (1.4 s at 360 Hz) spans a beat and the pause after it"})
    stride: int = field(default=4, metadata={"help": "points from one window's start to the next"})
    test_size: float = field(default=0.3, metadata={"help": "share of each experience's windows held out as its test set; 0: none"})
    split: Literal["random", "tail"] = field(default="tail", metadata={"help": "which windows are held out: tail (the experience's last ones, after a gap of the windows that share points with them) or random (stratified, seeded)"})


def windows_reader(options: WindowsOptions, context: ReaderContext) -> ArrayStream:
    if not options.path:
        raise ConfigError("stream.path", "missing: name the series (a CSV or .npz file) to cut into windows")
    return _windows(str(Path(options.path).expanduser()), options, context)


def ecg_reader(options: EcgOptions, context: ReaderContext) -> ArrayStream:
    source = str(Path(options.path).expanduser()) if options.path else ecg_path()
    return _windows(source, options, context)


def ecg_path() -> str:
    """The bundled MIT-BIH excerpt, or else the copy inside an installed sktime (found without importing it)."""
    if BUNDLED_ECG.is_file():
        return str(BUNDLED_ECG)
    spec = importlib.util.find_spec("sktime")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "mitdb" / "mitdb.csv"
        if path.is_file():
            return str(path)
    raise UserError(f"the MIT-BIH excerpt is neither bundled ({BUNDLED_ECG}) nor in an installed sktime; set stream.path")


def _windows(source: str, options: WindowsOptions, context: ReaderContext) -> ArrayStream:
    table = read_table(source, context, options.label, options.columns)
    x, y, starts = cut(table, options.window, options.stride, source)
    labelled = table.y is not None
    info = StreamInfo(
        input_shape=tuple(x.shape[1:]),
        num_classes=2,
        class_names=list(CLASS_NAMES),
        normalize=normalize_value(options.normalize),
        labels=labelled,
    )
    spans = [(int(part[0]), int(part[-1]) + 1) for part in np.array_split(np.arange(len(y)), options.experiences) if len(part)]
    # Windows that start less than a window's length before the first test window share points with it.
    gap = None if options.split == "random" else -(-options.window // options.stride) - 1
    return ordered_experiences(info, x, y, table.offsets[starts], spans, options.test_size, context.seed, context.batch_size, source, gap)


def cut(table: Table, window: int, stride: int, source: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The windows of ``table`` without a bad point: ``x`` (W, window, channels) float32, labels (W,)
    (1 when a point is anomalous, NO_LABEL without point labels) and each window's first row."""
    points, channels = table.x.shape
    if points < window:
        raise UserError(f"{source!r} has {points} points, fewer than one window of {window}: lower stream.window")
    starts = np.arange(0, points - window + 1, stride)
    bad = np.concatenate([[0], np.cumsum(~table.ok)])
    starts = starts[bad[starts + window] - bad[starts] == 0]
    if not len(starts):
        raise UserError(f"{source!r} has no window of {window} valid points (see the dead-letter file for the bad ones)")
    size = len(starts) * window * channels * 4
    if size > MAX_BYTES:
        raise UserError(
            f"{source!r}: {len(starts):,} windows of {window} × {channels} values take {size / 2**30:.1f} GiB, more than "
            f"{MAX_BYTES // 2**30} GiB: raise stream.stride (now {stride}) or shorten stream.window"
        )
    x = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(table.x, window, axis=0)[starts].transpose(0, 2, 1))
    if table.y is None:
        y = np.full(len(starts), NO_LABEL, dtype=np.int64)
    else:
        flagged = np.concatenate([[0], np.cumsum(table.y)])
        y = (flagged[starts + window] - flagged[starts] > 0).astype(np.int64)
    return x, y, starts
