"""The input contract of a served generation: what a predict call may send, checked in one place.

Both ``mlflow.pyfunc`` predict (:class:`lifelong_mlflow.pyfunc.GenerationModel`) and ``lifelong
serve`` turn their input into model rows with :meth:`Contract.check`, so a request is judged the
same way wherever it arrives. Every refusal is an :class:`InputError` (a ``ValueError``) whose
message names what was expected and what came; the server answers it with HTTP 400.

The contract comes from the generation's :class:`lifelong.types.StreamInfo`:

- **arrays** (a NumPy array, a list of rows): each row holds exactly ``prod(input_shape)`` numbers,
  flat or nested as ``input_shape`` (an array of shape ``(N, *input_shape)`` or ``(N, prod)``).
  Anything else is refused; rows are never re-cut to fit (30 rows of 31 values are an error, not
  31 predictions).
- **named input** (a DataFrame, a list of JSON objects, a dict of columns): with ``feature_names``
  (a csv reader's header) columns are matched **by name**, in any order; a missing feature or an
  unknown column is refused, naming them. Without ``feature_names``, the input must have exactly
  ``prod(input_shape)`` columns (taken in their order) or one column whose cells are whole samples.
- **task ids** (a ``task`` column, key or array): required when the model has several heads
  (``num_tasks > 1``), each an integer in ``0..num_tasks-1``; refused for a single-head model.
- **values**: numbers only (booleans count as 0/1) and finite after conversion to float32; a bad
  one is named by its row and column.

Scaling is not the contract's: a generation trained with ``normalize = "standard"`` carries its
statistics as buffers of the model (:mod:`lifelong.scaling`), so :meth:`Contract.check` passes the
raw rows on, in feature order, and the model scales them exactly as in training.

:func:`signature` describes the same contract as an MLflow ``ModelSignature`` for the registry
(see its docstring for what MLflow itself then enforces before lifelong's checks run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong.types import ModelSpec, StreamInfo

TASK = "task"
PROBABILITIES = "probabilities"  # the pyfunc params switch and the server's request flag
CLASS = "class"  # the predicted-class column of the probabilities frame
_LIST_LIMIT = 8  # names listed in a message before "… and N more"


class InputError(ValueError):
    """An input that does not fit the generation's contract; the message says what to send instead."""


@dataclass(frozen=True)
class Rows:
    """Checked model input: ``x`` float32 of shape (N, *input_shape), ``task`` int64 (N,) or None."""

    x: np.ndarray
    task: np.ndarray | None

    def __len__(self) -> int:
        return len(self.x)


def _names(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in list(items)[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return f"[{shown}{f', … and {more} more' if more > 0 else ''}]"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class Contract:
    """The checks for one generation (see the module docstring); cheap to build, immutable."""

    def __init__(self, info: StreamInfo):
        self.input_shape = tuple(int(d) for d in info.input_shape)
        self.width = math.prod(self.input_shape)
        self.num_tasks = int(info.num_tasks)
        self.num_classes = int(info.num_classes)
        self.feature_names = list(info.feature_names) if info.feature_names else None
        if self.feature_names is not None and len(self.feature_names) != self.width:
            raise ValueError(
                f"the spec names {len(self.feature_names)} features for an input of {self.width} values"
            )
        self._positions = {name: i for i, name in enumerate(self.feature_names or ())}
        # Class names label every head's outputs: readers that know labels give those of one head
        # (the task scenario's heads share them, see the csv reader). A list of another length
        # cannot be trusted to line up, so outputs are then numbered.
        names = info.class_names
        self.class_names = [str(n) for n in names] if names and len(names) == self.num_classes else None

    # -- what the model expects, in words ----------------------------------------------------
    def expected(self) -> str:
        if self.feature_names is not None:
            what = f"the {_plural(self.width, 'feature')} {_names(self.feature_names)}"
        else:
            shape = f" (shape {self.input_shape})" if len(self.input_shape) > 1 else ""
            what = f"{_plural(self.width, 'value')}{shape}"
        return what + (f" and a task id in 0..{self.num_tasks - 1}" if self.num_tasks > 1 else "")

    @property
    def classes(self) -> list[str]:
        """The output labels of a head: class names when known, else "0", "1" …"""
        return self.class_names if self.class_names is not None else [str(i) for i in range(self.num_classes)]

    def labels(self, indices: np.ndarray) -> np.ndarray:
        """Class names (NumPy str array) for predicted indices when the generation knows them, else the indices."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.class_names is None:
            return indices
        return np.asarray(self.class_names)[indices]

    def zeros(self, n: int = 1) -> Rows:
        """A valid all-zeros input (task 0 when multi-head): the smoke test of a newly loaded version."""
        task = np.zeros(n, dtype=np.int64) if self.num_tasks > 1 else None
        return Rows(np.zeros((n, *self.input_shape), dtype=np.float32), task)

    # -- checking ------------------------------------------------------------------------------
    def check(self, data: Any, task: Any = None) -> Rows:
        """Model rows from an array, a list of rows or of objects, a DataFrame or a dict.

        A dict is either ``{"x": rows, "task": ids}`` (what MLflow hands over for a multi-head
        tensor signature) or columns by name. ``task`` gives the ids for the whole input when the
        input itself carries none (the server's request-level ``"task"``: one id or one per row).
        """
        if isinstance(data, Mapping):
            if "x" in data and set(data) <= {"x", TASK} and "x" not in self._positions:
                if TASK in data and task is not None:
                    raise InputError(f"give the {TASK!r} ids once: in the input or for the whole request, not both")
                return self._with_task(self._array(data["x"]), data.get(TASK, task), "key")
            return self._columns({str(k): v for k, v in data.items()}, task, what="key")
        if hasattr(data, "columns") and hasattr(data, "iloc"):  # a pandas DataFrame
            columns = {str(c): data[c].to_numpy() for c in data.columns}
            if len(columns) != len(data.columns):
                raise InputError(f"the input has duplicate column names: {_names([str(c) for c in data.columns])}")
            return self._columns(columns, task, what="column")
        if isinstance(data, (list, tuple)) and data and all(isinstance(r, Mapping) for r in data):
            return self._objects(data, task)
        if isinstance(data, (list, tuple)) and any(isinstance(r, Mapping) for r in data):
            raise InputError("the instances mix objects and lists: send every instance the same way")
        return self._with_task(self._array(data), task, "key")

    def _array(self, data: Any, columns: Sequence[str] | None = None) -> np.ndarray:
        """(N, *input_shape) float32 from rows of numbers, refusing any other width."""
        try:
            values = np.asarray(data)
        except ValueError:  # ragged: rows of different lengths, or a list where a number belongs
            self._ragged(data, columns)
            raise
        if values.ndim == 0 or values.size == 0 and values.ndim < 2:
            raise InputError(f"no instances: send a list of instances, each with {self.expected()}")
        if values.ndim == 1:
            raise InputError(
                f"got one flat list of {_plural(len(values), 'value')}: send a list of instances "
                f"(a list of lists), each with {self.expected()}"
            )
        n = values.shape[0]
        if values.shape[1:] == self.input_shape:
            pass
        elif values.ndim == 2 and values.shape[1] == self.width:
            values = values.reshape(n, *self.input_shape)  # each row is exactly one sample
        else:
            got = values.shape[1:]
            got_text = _plural(got[0], "value") if len(got) == 1 else f"shape {got} ({math.prod(got)} values)"
            raise InputError(f"each instance must have {self.expected()}; got {_plural(n, 'instance')} of {got_text}")
        return self._numbers(values, columns, data)

    def _ragged(self, data: Any, columns: Sequence[str] | None) -> None:
        rows = list(data)
        width = _flat_length(rows[0])
        for i, row in enumerate(rows):
            if _flat_length(row) != width:
                raise InputError(
                    f"instance {i} has {_plural(_flat_length(row), 'value')}, instance 0 {width}: "
                    f"each instance must have {self.expected()}"
                )
        for i, row in enumerate(rows):
            for j, cell in enumerate(row):
                if _is_seq(cell) and columns is not None:
                    raise InputError(f"instance {i}, {self._column(j, columns)}: {_plain(cell)!r} is not a number")
        raise InputError(f"the instances are nested unevenly: each must have {self.expected()}")

    def _numbers(self, values: np.ndarray, columns: Sequence[str] | None, data: Any) -> np.ndarray:
        if values.dtype.kind not in "biuf":
            self._first_non_number(data if isinstance(data, (list, tuple)) else values, columns)
        with np.errstate(over="ignore", invalid="ignore"):
            x = values.astype(np.float32, copy=False)
        finite = np.isfinite(x)
        if not finite.all():
            row, *rest = (int(i) for i in np.argwhere(~finite)[0])
            flat = int(np.ravel_multi_index(rest, self.input_shape)) if rest else 0
            value = _plain(values[(row, *rest)])
            raise InputError(f"instance {row}, {self._column(flat, columns)}: {value!r} is not a finite float32 number")
        return np.ascontiguousarray(x)

    def _first_non_number(self, rows: Any, columns: Sequence[str] | None) -> None:
        """Raise naming the first cell that is not a number, read in the input as sent (NumPy would
        have turned every number of a row holding one string into a string)."""
        for row, cells in enumerate(rows):
            for col, cell in enumerate(_cells(cells)):
                if not _is_number(cell):
                    raise InputError(f"instance {row}, {self._column(col, columns)}: {_plain(cell)!r} is not a number")
        raise InputError("the instances hold values that are not numbers")

    def _column(self, index: int, columns: Sequence[str] | None) -> str:
        names = columns or self.feature_names
        if names is not None:
            return f"feature {names[index]!r}"
        if len(self.input_shape) == 1:
            return f"value {index}"
        return f"value {tuple(int(i) for i in np.unravel_index(index, self.input_shape))}"

    # -- named inputs --------------------------------------------------------------------------
    def _columns(self, columns: dict[str, Any], task: Any, what: str) -> Rows:
        ids = columns.pop(TASK, None)
        if ids is not None and task is not None:
            raise InputError(f"give the {TASK!r} ids once: in the input or for the whole request, not both")
        names = list(columns)
        if self.feature_names is not None:
            self._match(names, what)
            rows = np.stack([_column_values(columns[name], name) for name in self.feature_names], axis=1)
            x = self._array(rows, self.feature_names)
        elif len(names) == 1 and _holds_samples(columns[names[0]]):
            x = self._array(list(columns[names[0]]))  # one column of whole samples
        elif len(names) == self.width:
            x = self._array(np.stack([_column_values(columns[n], n) for n in names], axis=1), names)
        else:
            raise InputError(
                f"this model's features are not named: send {_plural(self.width, what)} (taken in order) "
                f"or one {what} of whole samples; got {_plural(len(names), what)} {_names(names)}"
            )
        return self._with_task(x, task if ids is None else ids, what)

    def _match(self, names: Sequence[str], what: str) -> None:
        missing = [n for n in self.feature_names if n not in set(names)]
        extra = [n for n in names if n not in self._positions]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {_names(missing)}")
            if extra:
                parts.append(f"unknown {what}{'s' if len(extra) > 1 else ''} {_names(extra)}")
            task = f", plus {TASK!r}" if self.num_tasks > 1 else ""
            raise InputError(
                f"features are matched by name: expected {_plural(self.width, what)} {_names(self.feature_names)}"
                f"{task}; {' and '.join(parts)}"
            )

    def _objects(self, rows: Sequence[Mapping[str, Any]], task: Any) -> Rows:
        """A list of JSON objects: one per instance, features by name, an optional ``task`` key each."""
        with_task = [TASK in r for r in rows]
        if any(with_task) and not all(with_task):
            raise InputError(f"instance {with_task.index(False)} has no {TASK!r} while others do: give it on every instance")
        if all(with_task) and task is not None:
            raise InputError(f"give the {TASK!r} ids once: in the instances or for the whole request, not both")
        ids = [r[TASK] for r in rows] if all(with_task) else task
        if self.feature_names is None:
            columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != TASK}
            for i, r in enumerate(rows):
                if set(r) - {TASK} != set(columns):
                    raise InputError(f"instance {i} has keys {_names(sorted(r))}, instance 0 {_names(sorted(rows[0]))}")
            if ids is not None:
                columns[TASK] = ids
            return self._columns(columns, None, what="key")
        names = self.feature_names
        for i, r in enumerate(rows):  # every object, not only the first: each is its own instance
            if len(r) - (TASK in r) != self.width or any(n not in r for n in names):
                try:
                    self._match([str(k) for k in r if k != TASK], "key")
                except InputError as exc:
                    raise InputError(f"instance {i}: {exc}") from None
        x = self._array([[r[n] for n in names] for r in rows], names)
        return self._with_task(x, ids, "key")

    # -- task ids ------------------------------------------------------------------------------
    def _with_task(self, x: np.ndarray, task: Any, what: str) -> Rows:
        n = len(x)
        if self.num_tasks == 1:
            if task is not None:
                raise InputError(f"this model has a single head: send no {TASK!r} {what}")
            return Rows(x, None)
        valid = f"0..{self.num_tasks - 1}"
        if task is None:
            raise InputError(f"this model has {self.num_tasks} task heads: give each instance a {TASK!r} {what} ({valid})")
        ids = np.asarray(task)
        if ids.ndim == 0:
            ids = np.full(n, ids.item(), dtype=ids.dtype if ids.dtype.kind in "iuf" else object)
        if ids.ndim != 1 or len(ids) != n:
            raise InputError(f"{TASK!r} must be one id or one per instance ({n}); got {_plural(ids.size, 'value')}")
        if ids.dtype.kind in "iu":
            out = ids.astype(np.int64)
        elif ids.dtype.kind == "f" and np.isfinite(ids).all() and (ids == np.round(ids)).all():
            out = ids.astype(np.int64)  # 2.0 is task 2, as the csv reader reads experience ids
        else:
            for i, value in enumerate(ids.tolist()):
                if not _is_number(value) or isinstance(value, bool) or not math.isfinite(value) or value != int(value):
                    raise InputError(f"instance {i}: task id {value!r} is not an integer (valid task ids: {valid})")
            out = np.asarray(ids.tolist(), dtype=np.int64)
        bad = np.flatnonzero((out < 0) | (out >= self.num_tasks))
        if len(bad):
            raise InputError(
                f"instance {bad[0]}: task id {out[bad[0]]} is out of range; this model has {self.num_tasks} task heads, "
                f"valid task ids are {valid}"
            )
        return Rows(x, out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating, bool, np.bool_)) and not isinstance(value, complex)


def _is_seq(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _holds_samples(values: Any) -> bool:
    first = values[0] if len(values) else None
    return _is_seq(first)


def _column_values(values: Any, name: str) -> np.ndarray:
    """One named column as a 1-D array of numbers (checked here: stacking a text column with
    numeric ones would turn every number into text)."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise InputError(f"column {name!r} must hold one number per instance, got cells of shape {values.shape[1:]}")
    if values.dtype.kind not in "biuf":
        for row, cell in enumerate(values.tolist()):
            if not _is_number(cell):
                raise InputError(f"instance {row}, feature {name!r}: {cell!r} is not a number")
        values = values.astype(np.float64)
    return values


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds, so messages read ``'a'`` rather than ``np.str_('a')``."""
    return value.item() if isinstance(value, np.generic) else value


def _cells(row: Any) -> list[Any]:
    """A row's values in order, nested lists flattened."""
    if isinstance(row, np.ndarray):
        return row.ravel().tolist()
    if not _is_seq(row):
        return [row]
    out: list[Any] = []
    for cell in row:
        out.extend(_cells(cell) if _is_seq(cell) else [cell])
    return out


def _flat_length(row: Any) -> int:
    """How many numbers a (possibly nested) row holds; a scalar counts as one."""
    if _is_seq(row):
        return sum(_flat_length(cell) for cell in row)
    return 1


def signature(spec: ModelSpec):
    """The generation's MLflow ``ModelSignature`` (what the registry shows and MLflow enforces).

    - **with feature names**: a ``ColSpec`` ``double`` per feature, in order, plus an optional
      ``task`` ``long`` column when the model has several heads (optional so that a missing one
      reaches lifelong's message naming the valid ids rather than MLflow's "missing inputs");
    - **without**: one unnamed ``TensorSpec`` ``float32`` of shape ``(-1, *input_shape)``; with
      several heads MLflow cannot mix a tensor with an optional column, so the inputs are two named
      tensors, ``x`` ``(-1, *input_shape)`` and ``task`` ``int64 (-1,)``: pyfunc then takes
      ``{"x": array, "task": ids}`` or a DataFrame with an ``x`` column of samples and ``task``.
    - **params**: ``probabilities`` (boolean, default False).

    MLflow enforces this before ``GenerationModel.predict`` runs: tensors must have the exact shape
    and dtype (float32), a DataFrame a double column per named feature (MLflow refuses int64
    columns: cast with ``astype(float)``) and MLflow *drops* unknown columns with a warning; every
    other check, and every check in ``lifelong serve``, is lifelong's own.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

    info = spec.info
    shape = (-1, *(int(d) for d in info.input_shape))
    if info.feature_names:
        columns = [ColSpec(DataType.double, name) for name in info.feature_names]
        if info.num_tasks > 1:
            columns.append(ColSpec(DataType.long, TASK, required=False))
        inputs = Schema(columns)
    elif info.num_tasks > 1:
        inputs = Schema([TensorSpec(np.dtype(np.float32), shape, "x"), TensorSpec(np.dtype(np.int64), (-1,), TASK)])
    else:
        inputs = Schema([TensorSpec(np.dtype(np.float32), shape)])
    params = ParamSchema([ParamSpec(PROBABILITIES, DataType.boolean, False)])
    return ModelSignature(inputs=inputs, params=params)
