"""The ``npz`` reader: a labelled stream from one NumPy ``.npz`` archive, in file order.

Format (loaded with ``allow_pickle=False``):

- ``x``: numeric array of shape (N, ...), one sample per row;
- ``y``: N labels, either integers ≥ 0 used as class indices as given (``num_classes`` = largest
  label + 1, so labels never need remapping), or strings mapped to indices in sorted order
  (``class_names`` lists them);
- ``experience`` (optional): N non-negative integer experience ids; without it every row is
  experience 0.

Rows stream in file order, never shuffled, in minibatches that never span two experiences: a
batch is cut where the experience id changes, so an id that recurs later in the file (0 0 1 1 0)
streams again at that place as a separate block.

Scenarios: ``class`` and ``domain`` read the same way (one head, labels as given; the scenario is
recorded in StreamInfo). ``task`` adds per-sample task ids equal to the experience id, with one head
per id (``num_tasks`` = largest id + 1) and labels still as given, so give each experience local
labels 0..k-1 to keep the heads small.

Held-out data comes from ``test_path`` (an archive in the same format; its experience ids name the
test set of each experience) or from ``test_fraction`` of each experience's rows, stratified by
class and drawn with the run's seed (the same rows for the same seed). Both are known before
training, so every experience's test set is available from the start.

Bad rows — NaN or infinite values in ``x``, a label that is missing (NaN or empty), negative or not
an integer, an experience id that is not a non-negative integer, a test label the training data
does not have — go to the dead-letter file (source: the file, offset: the row index, record: the
row's label and experience id; ``x`` is not copied, as rows can be large) and the rest streams. A
missing or unreadable file, missing ``x`` or ``y``, or arrays of different lengths raise UserError
before training.

>>> import tempfile, numpy as np
>>> from lifelong.readers import DeadLetters, ReaderContext
>>> path = tempfile.mkdtemp() + "/stream.npz"
>>> np.savez(path, x=np.ones((6, 2)), y=np.array([0, 1, 0, 1, 0, 1]), experience=np.array([0, 0, 0, 1, 1, 1]))
>>> reader = npz_reader(NpzOptions(path=path), ReaderContext(batch_size=2, seed=0, dead_letter=DeadLetters(path + ".dl")))
>>> [(b.experience, b.start, b.stop) for b in reader]
[(0, 0, 2), (0, 2, 3), (1, 3, 5), (1, 5, 6)]
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from lifelong.errors import ConfigError, UserError
from lifelong.readers import ReaderContext
from lifelong.types import Batch, StreamInfo
from lifelong_streams.arrays import ArrayStream
from lifelong_streams.benchmarks import holdout


@dataclass
class NpzOptions:
    path: str = field(default="", metadata={"help": "the .npz archive: arrays x, y and optionally experience (required)"})
    test_path: str = field(default="", metadata={"help": "held-out .npz in the same format; empty: hold out test_fraction"})
    test_fraction: float = field(default=0.0, metadata={"help": "share of each experience's rows held out for evaluation"})
    scenario: Literal["class", "task", "domain"] = field(default="class", metadata={"help": "class, task (task id = experience id) or domain incremental"})

    def check(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.test_path and self.test_fraction:
            raise ValueError("set test_path or test_fraction, not both")


@dataclass
class _Rows:
    """The valid rows of one archive, in file order."""

    x: np.ndarray
    y: np.ndarray  # int64 labels, or str labels before encoding
    experience: np.ndarray  # int64
    offsets: np.ndarray  # row index in the file
    has_experience: bool = True  # False: the archive has no experience array, every row is 0


class NpzStream(ArrayStream):
    """An ArrayStream whose training arrays are keyed by run, a contiguous block of one experience.

    Keying by run instead of by experience id keeps file order when an id recurs later in the file;
    each batch is relabelled with its run's experience id on the way out.
    """

    def __init__(self, run_experience: list[int], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._run_experience = run_experience

    def __iter__(self) -> Iterator[Batch]:
        for batch in super().__iter__():
            batch.experience = self._run_experience[batch.experience]
            yield batch


def npz_reader(options: NpzOptions, context: ReaderContext) -> NpzStream:
    if not options.path:
        raise ConfigError("stream.path", "missing: name the .npz file to read")
    source = str(Path(options.path).expanduser())
    rows = _read(source, context)
    if options.scenario == "task" and not rows.has_experience:
        raise UserError(f"{source!r} has no 'experience' array; the task scenario takes its task ids from it")
    if not len(rows.y):
        raise UserError(f"{source!r} has no valid rows (see the dead-letter file for why each was rejected)")

    text_labels = rows.y.dtype.kind == "U"
    if text_labels:
        names = sorted(set(rows.y.tolist()))
        rows.y = _encode(rows.y, names)
    else:
        names = [str(i) for i in range(int(rows.y.max()) + 1)]

    if options.test_path:
        test_source = str(Path(options.test_path).expanduser())
        test = _read(test_source, context)
        if test.x.shape[1:] != rows.x.shape[1:]:
            raise UserError(f"{test_source!r}: x has rows of shape {test.x.shape[1:]}, the training file {rows.x.shape[1:]}")
        test = _known_labels(test, names, text_labels, test_source, context)
        train_rows = rows
    else:
        train_rows, test = _split(rows, options.test_fraction, context.seed)

    task = options.scenario == "task"
    experiences = list(dict.fromkeys(rows.experience.tolist()))
    num_tasks = int(max(rows.experience.max(), test.experience.max(initial=0))) + 1 if task else 1
    info = StreamInfo(
        input_shape=tuple(rows.x.shape[1:]),
        num_classes=len(names),
        scenario=options.scenario,
        num_tasks=num_tasks,
        experiences=experiences,
        class_names=names,
    )
    runs, run_experience, offsets = {}, [], {}
    for r, (a, b) in enumerate(_runs(train_rows.experience)):
        exp = int(train_rows.experience[a])
        runs[r] = (train_rows.x[a:b], train_rows.y[a:b], np.full(b - a, exp) if task else None)
        offsets[r] = train_rows.offsets[a:b]
        run_experience.append(exp)
    tests = {}
    for exp in dict.fromkeys(test.experience.tolist()):
        mask = test.experience == exp
        tests[exp] = (test.x[mask], test.y[mask], np.full(int(mask.sum()), exp) if task else None)
    return NpzStream(run_experience, info, runs, tests, context.batch_size, source, offsets)


def _read(source: str, context: ReaderContext) -> _Rows:
    """The archive's valid rows; bad ones go to the dead letters."""
    arrays = _open(source)
    x, y = arrays["x"], arrays["y"]
    n = len(x) if x.ndim else 0
    if x.ndim < 1 or x.dtype.kind not in "biuf":
        raise UserError(f"{source!r}: x must be a numeric array of shape (N, ...), got dtype {x.dtype} and shape {x.shape}")
    if y.shape != (n,):
        raise UserError(f"{source!r}: y must hold one label per row of x ({n}), got shape {y.shape}")
    exp = arrays.get("experience")
    if exp is not None and exp.shape != (n,):
        raise UserError(f"{source!r}: experience must hold one id per row of x ({n}), got shape {exp.shape}")

    reasons: dict[int, str] = {}
    finite = np.isfinite(x.reshape(n, -1)).all(axis=1) if x.dtype.kind == "f" else np.ones(n, bool)
    for i in np.flatnonzero(~finite):
        reasons.setdefault(int(i), "x has a NaN or infinite value")
    y, bad = _integers(y, "label", source, allow_text=True)
    for i, reason in bad.items():
        reasons.setdefault(i, reason)
    if exp is None:
        exp = np.zeros(n, dtype=np.int64)
    else:
        exp, bad = _integers(exp, "experience id", source, allow_text=False)
        for i, reason in bad.items():
            reasons.setdefault(i, reason)
    raw_y, raw_exp = arrays["y"], arrays.get("experience")
    for i in sorted(reasons):
        record = {"y": _plain(raw_y[i]), "experience": None if raw_exp is None else _plain(raw_exp[i])}
        context.dead_letter(reasons[i], source, i, record)
    keep = np.ones(n, bool)
    keep[list(reasons)] = False
    return _Rows(x[keep], y[keep], exp[keep], np.flatnonzero(keep), has_experience=raw_exp is not None)


def _open(source: str) -> dict[str, np.ndarray]:
    if not Path(source).is_file():
        raise UserError(f"npz file {source!r} does not exist (stream.path or stream.test_path)")
    try:
        loaded = np.load(source, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"{source!r} is a single .npy array, not an .npz archive with arrays x and y")
        with loaded as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise UserError(f"{source!r} has no array {missing[0]!r} (arrays: {', '.join(archive.files) or 'none'})")
            return {k: archive[k] for k in ("x", "y", "experience") if k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise UserError(f"{source!r} is not a readable .npz archive: {exc}") from None


def _integers(values: np.ndarray, what: str, source: str, allow_text: bool) -> tuple[np.ndarray, dict[int, str]]:
    """Non-negative integers as int64 (text labels pass through as str) and the reason for each bad row."""
    kind = values.dtype.kind
    if kind == "S":
        values, kind = np.char.decode(values, "utf-8", "replace"), "U"
    if kind == "U" and allow_text:
        return values, {int(i): f"{what} is empty" for i in np.flatnonzero(np.char.strip(values) == "")}
    bad: dict[int, str] = {}
    if kind == "U":
        out = np.zeros(len(values), dtype=np.int64)
        for i, text in enumerate(values.tolist()):
            try:
                out[i] = int(text)
            except ValueError:
                bad[i] = f"{what} {text!r} is not an integer"
    elif kind in "biu":
        out = values.astype(np.int64)
    elif kind == "f":
        out = np.zeros(len(values), dtype=np.int64)
        for i in np.flatnonzero(np.isnan(values)):
            bad[int(i)] = f"{what} is missing (NaN)"
        for i in np.flatnonzero(~np.isnan(values) & ((values != np.floor(values)) | np.isinf(values))):
            bad[int(i)] = f"{what} {values[i]} is not an integer"
        ok = np.isfinite(values) & (values == np.floor(values))
        out[ok] = values[ok].astype(np.int64)
    else:
        raise UserError(f"{source!r}: {what}s must be integers{' or strings' if allow_text else ''}, got dtype {values.dtype}")
    for i in np.flatnonzero(out < 0):
        bad.setdefault(int(i), f"{what} {out[i]} is negative")
    return out, bad


def _known_labels(rows: _Rows, names: list[str], text_labels: bool, source: str, context: ReaderContext) -> _Rows:
    """Test rows encoded like the training labels; a label the training data lacks is dead-lettered."""
    if rows.y.dtype.kind == "U":
        if not text_labels:
            raise UserError(f"{source!r}: y holds strings, the training file's y integers")
        known = np.isin(rows.y, names)
    else:
        if text_labels:
            raise UserError(f"{source!r}: y holds integers, the training file's y strings")
        known = rows.y < len(names)
    for i in np.flatnonzero(~known):
        offset = int(rows.offsets[i])
        context.dead_letter(f"label {_plain(rows.y[i])!r} is not among the training labels", source, offset, {"y": _plain(rows.y[i])})
    rows = _Rows(rows.x[known], rows.y[known], rows.experience[known], rows.offsets[known])
    if rows.y.dtype.kind == "U":
        rows.y = _encode(rows.y, names)
    return rows


def _encode(labels: np.ndarray, names: list[str]) -> np.ndarray:
    return np.searchsorted(np.array(names), labels).astype(np.int64)


def _split(rows: _Rows, fraction: float, seed: int) -> tuple[_Rows, _Rows]:
    """Hold out ``fraction`` of each experience's rows (stratified by class); both parts keep file order."""
    test = np.zeros(len(rows.y), bool)
    if fraction > 0:
        rng = np.random.default_rng(seed)
        for exp in dict.fromkeys(rows.experience.tolist()):
            idx = np.flatnonzero(rows.experience == exp)
            if len(idx) > 1:
                test[idx[holdout(rows.y[idx], fraction, rng)[1]]] = True
    part = lambda m: _Rows(rows.x[m], rows.y[m], rows.experience[m], rows.offsets[m])  # noqa: E731
    return part(~test), part(test)


def _runs(experience: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, stop) spans of consecutive rows with the same experience id."""
    cuts = [0, *(np.flatnonzero(np.diff(experience) != 0) + 1).tolist(), len(experience)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _plain(value: Any) -> Any:
    """A JSON-safe Python value (NaN and infinities as text)."""
    value = value.item() if isinstance(value, np.generic) else value
    return repr(value) if isinstance(value, float) and not np.isfinite(value) else value
