"""The ``npz`` reader: a stream from one NumPy ``.npz`` archive, in file order, labelled or not.

Format (loaded with ``allow_pickle=False``):

- ``x``: numeric array of shape (N, ...), one sample per row;
- ``y``: N labels, either integers ≥ 0 used as class indices as given (``num_classes`` = largest
  label + 1, so labels never need remapping), or strings mapped to indices in sorted order
  (``class_names`` lists them). Labels are bounded by ``max_classes`` (default 1000), since the
  data would otherwise set the model's size (a label of 200000 builds a 200,001-class head, 10^12
  cannot be allocated at all): more than ``max_classes`` distinct labels is refused before
  training (UserError, exit 2, naming the count and the option), and an integer label at or above
  ``max_classes`` among fewer distinct labels is a dead letter (one junk index must not stop the
  stream nor size the model);
- ``experience`` (optional): N non-negative integer experience ids; without it every row is
  experience 0;
- ``x_test``, ``y_test``, ``experience_test`` (optional): held-out data in the same archive, read
  like ``test_path`` (below).

Labels are optional: an archive without ``y`` is an **unlabeled** stream (for anomaly detectors,
which learn without labels). Its batches carry ``NO_LABEL`` (-1) in ``y``, ``StreamInfo.labels``
is False, and the head is described as ``num_classes = 2``, ``class_names = ["normal",
"anomaly"]``: the only models that train on it are detectors, and the labels its test data may
carry are 0 (normal) and 1 (anomaly). Test data of an unlabeled stream may have labels (``y_test``,
or ``y`` in ``test_path``): they must be 0 or 1, other values are dead letters; test data without
labels holds -1 (a test set of -1 labels has no ROC-AUC).

Rows stream in file order, never shuffled, in minibatches that never span two experiences: a
batch is cut where the experience id changes, so an id that recurs later in the file (0 0 1 1 0)
streams again at that place as a separate block.

Scenarios: ``class`` and ``domain`` read the same way (one head, labels as given; the scenario is
recorded in StreamInfo). ``task`` adds per-sample task ids equal to the experience id, with one head
per id (``num_tasks`` = largest id + 1) and labels still as given, so give each experience local
labels 0..k-1 to keep the heads small (heads × classes beyond ``max_classes`` are refused).

Scaling: ``normalize = "standard"`` standardises every element of ``x`` (a feature, or a pixel of
an image) with running statistics kept inside the model (:mod:`lifelong.scaling`): updated from
each trained stream row once, frozen into each generation, applied by the served model.

Held-out data comes from ``test_path`` (an archive in the same format; its experience ids name the
test set of each experience), from the archive's own ``x_test`` arrays, or from ``test_fraction``
of each experience's rows, stratified by class and drawn with the run's seed (the same rows for
the same seed). Both are known before
training, so every experience's test set is available from the start.

Bad rows — a value in ``x`` that is NaN or infinite *after the cast to the training dtype float32*
(``1e308`` is finite in float64 but not in float32, and one such value turns every weight into
NaN), a label that is missing (NaN or empty), negative, not an integer or not below
``max_classes``, an experience id that is not a non-negative integer below 2^53, a test label the
training data does not have — go to the dead-letter file (source: the file, offset: the row index,
record: the row's label and experience id; ``x`` is not copied, as rows can be large; the reason
names the first bad feature and its value) and the rest streams: the archive is read upfront, but
a bad row is still one record, never a reason to refuse the file. A missing or unreadable file,
missing ``x``, arrays of different lengths, ``x_test`` together with ``test_path`` or
``test_fraction``, or more distinct labels than ``max_classes`` raise UserError before training.

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
from lifelong.objective import NO_LABEL
from lifelong.readers import ReaderContext
from lifelong.scaling import normalize_value
from lifelong.types import Batch, StreamInfo
from lifelong_streams.arrays import ArrayStream
from lifelong_streams.benchmarks import holdout
from lifelong_streams.records import MAX_CLASSES, check_max_classes, check_task_heads, say, short

MAX_EXPERIENCE = 2**53  # experience ids must be below this
ANOMALY_CLASSES = ["normal", "anomaly"]  # the head an unlabeled stream describes (see the module docstring)


@dataclass
class NpzOptions:
    path: str = field(default="", metadata={"help": "the .npz archive: array x, optionally y (without it the stream is unlabeled: y = -1), experience and x_test/y_test/experience_test (required)"})
    test_path: str = field(default="", metadata={"help": "held-out .npz in the same format; empty: the archive's x_test if it has one, else hold out test_fraction"})
    test_fraction: float = field(default=0.0, metadata={"help": "share of each experience's rows held out for evaluation"})
    scenario: Literal["class", "task", "domain"] = field(default="class", metadata={"help": "class, task (task id = experience id) or domain incremental"})
    max_classes: int = field(default=MAX_CLASSES, metadata={"help": "integer labels must be below it and distinct labels at most it (more is refused; a label above is a dead letter)"})
    normalize: Literal["none", "standard"] = field(default="none", metadata={"help": "input scaling: standard keeps running per-element mean and variance inside the model (frozen into each generation, applied when served); none: raw values"})

    def check(self) -> None:
        check_max_classes(self.max_classes)
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
    labelled: bool = True  # False: the archive has no y, every label is NO_LABEL


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
    arrays = _open(source)
    rows = _read(source, context, options.max_classes, arrays)
    if options.scenario == "task" and not rows.has_experience:
        raise UserError(f"{source!r} has no 'experience' array; the task scenario takes its task ids from it")
    if not len(rows.y):
        raise UserError(f"{source!r} has no valid rows (see the dead-letter file for why each was rejected)")

    text_labels = rows.y.dtype.kind == "U"
    if not rows.labelled:
        names = list(ANOMALY_CLASSES)
    elif text_labels:
        names = sorted(set(rows.y.tolist()))
        rows.y = _encode(rows.y, names)
    else:
        names = [str(i) for i in range(int(rows.y.max()) + 1)]

    inline = "x_test" in arrays
    if inline and (options.test_path or options.test_fraction):
        raise UserError(
            f"{source!r} holds its own test data (x_test): leave stream.test_path and stream.test_fraction unset, "
            "or remove x_test from the archive"
        )
    if options.test_path or inline:
        test_source = str(Path(options.test_path).expanduser()) if options.test_path else f"{source}:test"
        test_arrays = _open(test_source) if options.test_path else arrays
        test = _read(test_source, context, arrays=test_arrays, suffix="" if options.test_path else "_test")
        if test.x.shape[1:] != rows.x.shape[1:]:
            raise UserError(f"{test_source!r}: x has rows of shape {test.x.shape[1:]}, the training file {rows.x.shape[1:]}")
        if rows.labelled and not test.labelled:
            raise UserError(f"{test_source!r}: the test data has no labels (y), the training data has: a test set needs them")
        test = _known_labels(test, names, text_labels, test_source, context, rows.labelled)
        train_rows = rows
    else:
        train_rows, test = _split(rows, options.test_fraction, context.seed)

    task = options.scenario == "task"
    experiences = list(dict.fromkeys(rows.experience.tolist()))
    num_tasks = int(max(rows.experience.max(), test.experience.max(initial=0))) + 1 if task else 1
    if task:
        check_task_heads(num_tasks, len(names), options.max_classes, f"npz file {source!r}")
    info = StreamInfo(
        input_shape=tuple(rows.x.shape[1:]),
        num_classes=len(names),
        scenario=options.scenario,
        num_tasks=num_tasks,
        experiences=experiences,
        class_names=names,
        normalize=normalize_value(options.normalize),  # see lifelong.scaling
        labels=rows.labelled,
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


def _read(
    source: str, context: ReaderContext, max_classes: int | None = None, arrays: dict[str, np.ndarray] | None = None, suffix: str = ""
) -> _Rows:
    """The archive's valid rows, ``x`` as float32; bad ones go to the dead letters.

    ``arrays``: the archive's arrays (:func:`_open`); ``suffix`` picks ``x_test``, ``y_test`` and
    ``experience_test`` instead of ``x``, ``y`` and ``experience``. Without ``y`` every label is
    NO_LABEL. ``max_classes`` (the training file): more distinct labels than that is a UserError,
    and an integer label at or above it a bad row. A test file's labels are checked against the
    training file's classes instead (:func:`_known_labels`).
    """
    arrays = _open(source) if arrays is None else arrays
    x, raw_y, raw_exp = arrays[f"x{suffix}"], arrays.get(f"y{suffix}"), arrays.get(f"experience{suffix}")
    n = len(x) if x.ndim else 0
    if x.ndim < 1 or x.dtype.kind not in "biuf":
        raise UserError(f"{source!r}: x must be a numeric array of shape (N, ...), got dtype {x.dtype} and shape {x.shape}")
    if raw_y is not None and raw_y.shape != (n,):
        raise UserError(f"{source!r}: y must hold one label per row of x ({n}), got shape {raw_y.shape}")
    if raw_exp is not None and raw_exp.shape != (n,):
        raise UserError(f"{source!r}: experience must hold one id per row of x ({n}), got shape {raw_exp.shape}")

    reasons: dict[int, str] = {}
    x, bad = _features(x)
    reasons.update(bad)
    if raw_y is None:
        y = np.full(n, NO_LABEL, dtype=np.int64)
    else:
        y, bad = _integers(raw_y, "label", source, allow_text=True)
        for i, reason in bad.items():
            reasons.setdefault(i, reason)
        if max_classes is not None:
            for i, reason in _bounded(y, bad, max_classes, source).items():
                reasons.setdefault(i, reason)
    exp = raw_exp
    if exp is None:
        exp = np.zeros(n, dtype=np.int64)
    else:
        exp, bad = _integers(exp, "experience id", source, allow_text=False)
        for i, reason in bad.items():
            reasons.setdefault(i, reason)
    for i in sorted(reasons):
        record = {
            "y": None if raw_y is None else _plain(raw_y[i]),
            "experience": None if raw_exp is None else _plain(raw_exp[i]),
        }
        context.dead_letter(reasons[i], source, i, record)
    keep = np.ones(n, bool)
    keep[list(reasons)] = False
    return _Rows(
        x[keep], y[keep], exp[keep], np.flatnonzero(keep), has_experience=raw_exp is not None, labelled=raw_y is not None
    )


def _features(x: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """``x`` cast to float32 (the training dtype) and the reason for each row with a value that is
    not finite after the cast, naming the first such feature."""
    n = len(x)
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x.astype(np.float32, copy=False)
    if x.dtype.kind != "f":
        return x32, {}  # booleans and integers of up to 64 bits are always finite in float32
    flat = x32.reshape(n, int(np.prod(x.shape[1:], dtype=np.int64)))
    finite = np.isfinite(flat).all(axis=1)
    reasons: dict[int, str] = {}
    original = x.reshape(flat.shape)
    for i in np.flatnonzero(~finite).tolist():
        j = int(np.flatnonzero(~np.isfinite(flat[i]))[0])
        where = j if x.ndim <= 2 else tuple(int(k) for k in np.unravel_index(j, x.shape[1:]))
        value = original[i, j]
        if np.isfinite(value):
            reasons[i] = f"x has {float(value):g} at feature {where}, beyond float32's range (±3.4e38)"
        else:
            reasons[i] = f"x has a NaN or infinite value ({float(value)}) at feature {where}"
    return x32, reasons


def _bounded(y: np.ndarray, bad: dict[int, str], max_classes: int, source: str) -> dict[int, str]:
    """Refuse more than ``max_classes`` distinct labels; the reason for each integer label at or above it."""
    ok = np.ones(len(y), bool)
    ok[list(bad)] = False
    distinct = np.unique(y[ok])
    if len(distinct) > max_classes:
        largest = f" (largest {int(distinct[-1])})" if y.dtype.kind != "U" else ""
        raise UserError(
            f"{source!r} has {len(distinct)} distinct labels{largest}, more than max_classes = {max_classes}: "
            "a label array with that many values is usually not a class; check y or raise stream.max_classes"
        )
    if y.dtype.kind == "U":
        return {}
    over = np.flatnonzero(ok & (y >= max_classes))
    if len(over):
        say(
            f"npz {source!r}: {len(over)} row(s) have a label at or above max_classes = {max_classes} (largest "
            f"{int(y[over].max())}) and go to the dead letters; raise stream.max_classes if the data has that many classes"
        )
    return {
        int(i): f"label {int(y[i])} is not below max_classes ({max_classes}): integer labels are class indices "
        "and size the model's head; raise stream.max_classes if the data has that many classes"
        for i in over
    }


def _open(source: str) -> dict[str, np.ndarray]:
    if not Path(source).is_file():
        raise UserError(f"npz file {source!r} does not exist (stream.path or stream.test_path)")
    try:
        loaded = np.load(source, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"{source!r} is a single .npy array, not an .npz archive with arrays x and y")
        with loaded as archive:
            if "x" not in archive.files:
                raise UserError(f"{source!r} has no array 'x' (arrays: {', '.join(archive.files) or 'none'})")
            orphans = [k for k in ("y_test", "experience_test") if k in archive.files and "x_test" not in archive.files]
            if orphans:
                raise UserError(f"{source!r} has {orphans[0]!r} but no 'x_test' to go with it")
            return {k: archive[k] for k in ARRAYS if k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise UserError(f"{source!r} is not a readable .npz archive: {exc}") from None


ARRAYS = ("x", "y", "experience", "x_test", "y_test", "experience_test")


def _integers(values: np.ndarray, what: str, source: str, allow_text: bool) -> tuple[np.ndarray, dict[int, str]]:
    """Non-negative integers below 2^53 as int64 (text labels pass through as str) and the reason for each bad row."""
    kind = values.dtype.kind
    bad: dict[int, str] = {}
    if kind == "S":
        for i, data in enumerate(values.tolist()):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad[i] = f"{what} is not valid UTF-8: byte 0x{data[exc.start]:02x} at position {exc.start + 1}"
        values, kind = np.char.decode(values, "utf-8", "replace"), "U"
    if kind == "U" and allow_text:
        empty = {int(i): f"{what} is empty" for i in np.flatnonzero(np.char.strip(values) == "")}
        return values, {**empty, **bad}

    def large(value: Any) -> str:
        return f"{what} {value} is too large (at most 2^53 - 1)"

    out = np.zeros(len(values), dtype=np.int64)
    if kind == "U":
        for i, text in enumerate(values.tolist()):
            try:
                number = int(text)
            except ValueError:  # not an integer, or more digits than Python converts
                bad[i] = f"{what} {short(text)} is not an integer"
                continue
            if number >= MAX_EXPERIENCE:
                bad[i] = large(short(text))
            elif number < 0:
                bad[i] = f"{what} {number} is negative"
            else:
                out[i] = number
    elif kind in "biu":
        huge = values >= MAX_EXPERIENCE
        for i in np.flatnonzero(huge):
            bad[int(i)] = large(values[i])
        fine = ~huge
        out[fine] = values[fine].astype(np.int64)
    elif kind == "f":
        nan = np.isnan(values)
        for i in np.flatnonzero(nan):
            bad[int(i)] = f"{what} is missing (NaN)"
        with np.errstate(invalid="ignore"):
            integral = ~nan & np.isfinite(values) & (values == np.floor(values))
        for i in np.flatnonzero(~nan & ~integral):
            bad[int(i)] = f"{what} {values[i]} is not an integer"
        huge = integral & (values >= MAX_EXPERIENCE)
        for i in np.flatnonzero(huge):
            bad[int(i)] = large(f"{values[i]:g}")
        ok = integral & ~huge
        out[ok] = values[ok].astype(np.int64)
    else:
        raise UserError(f"{source!r}: {what}s must be integers{' or strings' if allow_text else ''}, got dtype {values.dtype}")
    for i in np.flatnonzero(out < 0):
        bad.setdefault(int(i), f"{what} {out[i]} is negative")
    return out, bad


def _known_labels(
    rows: _Rows, names: list[str], text_labels: bool, source: str, context: ReaderContext, labelled: bool = True
) -> _Rows:
    """Test rows encoded like the training labels; a label the training data lacks is dead-lettered.

    Under an unlabeled training stream (``labelled`` False) test labels must be 0 or 1 (normal,
    anomaly), and test rows without labels keep NO_LABEL.
    """
    if not labelled and rows.y.dtype.kind == "U":
        raise UserError(f"{source!r}: y holds strings; test labels of an unlabeled stream are 0 (normal) or 1 (anomaly)")
    if rows.y.dtype.kind == "U":
        if not text_labels:
            raise UserError(f"{source!r}: y holds strings, the training file's y integers")
        known = np.isin(rows.y, names)
    else:
        if text_labels:
            raise UserError(f"{source!r}: y holds integers, the training file's y strings")
        known = rows.y < len(names)
    why = "is not among the training labels" if labelled else "is not 0 (normal) or 1 (anomaly), the labels of an unlabeled stream's test data"
    for i in np.flatnonzero(~known):
        offset = int(rows.offsets[i])
        context.dead_letter(f"label {_plain(rows.y[i])!r} {why}", source, offset, {"y": _plain(rows.y[i])})
    rows = _Rows(rows.x[known], rows.y[known], rows.experience[known], rows.offsets[known], labelled=rows.labelled)
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
    part = lambda m: _Rows(rows.x[m], rows.y[m], rows.experience[m], rows.offsets[m], labelled=rows.labelled)  # noqa: E731
    return part(~test), part(test)


def _runs(experience: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, stop) spans of consecutive rows with the same experience id."""
    cuts = [0, *(np.flatnonzero(np.diff(experience) != 0) + 1).tolist(), len(experience)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _plain(value: Any) -> Any:
    """A JSON-safe Python value (NaN and infinities as text)."""
    value = value.item() if isinstance(value, np.generic) else value
    return repr(value) if isinstance(value, float) and not np.isfinite(value) else value
