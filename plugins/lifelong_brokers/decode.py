"""Decoding one broker message into a record: float32 features, label text, experience id, key, timestamp.

:class:`Decoder` (built from :class:`~lifelong_brokers.options.BrokerOptions`) turns the bytes of a
message (``decode``) or an already-parsed JSON object / Redis field map (``decode_object``) into a
:class:`Decoded`, or raises :class:`BadRecord` whose message is the reason for the dead-letter file,
naming the field or column. :func:`raw_record` turns the original bytes into what a dead letter
carries.

- ``json``: a UTF-8 JSON object. Features are the ``features`` fields in order, or the array in
  ``features_field`` of exactly ``num_features`` numbers. A feature may be a JSON number or a string
  spelling one; booleans, nulls, objects and lists are refused.
- ``csv``: one UTF-8 CSV line (no header; the columns are named by ``columns``); every column but
  the label, experience, key and timestamp ones is a feature, in order.

Every feature must be finite and within float32's range (±3.4e38): ``1e308`` is finite in
float64 but infinite once cast to the training dtype, and one such value turns every weight into
NaN. The label is text after trimming (a JSON number is its text, 3 and 3.0 being one class "3");
a null, absent or blank label makes the record unlabeled (``label is None``). The experience id is
a non-negative integer below 2^53 (``2.0`` reads as 2). The key is the field's text (None when the
``key`` option is empty: the reader then uses the message key / entry id). The timestamp is the
field's value (number or text) or None.

>>> from lifelong_brokers.options import BrokerOptions
>>> decode = Decoder(BrokerOptions(features=["a", "b"], num_classes=2))
>>> r = decode.decode(b'{"a": 1, "b": "2.5", "label": 3.0}')
>>> r.x.tolist(), r.label, r.experience
([1.0, 2.5], '3', None)
>>> decode.decode(b'{"a": 1, "b": 1e39, "label": "x"}')
Traceback (most recent call last):
...
lifelong_streams.records.BadRecord: feature field 'b' is 1e+39, beyond float32's range (±3.4e38)
>>> raw_record(b"ok"), raw_record(b"\\xff")
('ok', {'base64': '/w=='})
"""

from __future__ import annotations

import base64
import csv
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

try:  # orjson parses a record several times faster than json (JSON parsing is most of a reader's time)
    from orjson import loads as _fast_json
except ImportError:  # optional: the kafka and redis extras bring it
    _fast_json = None

from lifelong_brokers.options import BrokerOptions
from lifelong_streams.records import BadRecord, short

__all__ = ["BadRecord", "Decoded", "Decoder", "raw_record"]

MAX_EXPERIENCE = 2**53  # experience ids must be below this (exact in float64)


@dataclass
class Decoded:
    """One good record. ``experience`` is None when the stream has no experience field."""

    x: np.ndarray  # float32, shape (num_features,)
    label: str | None  # None: unlabeled
    experience: int | None
    key: str | None  # None: no key field configured (the reader supplies the message key / entry id)
    timestamp: float | str | None


def raw_record(data: bytes | str) -> str | dict[str, str]:
    """A message's original bytes for a dead letter: the text if it is UTF-8, else ``{"base64": ...}``."""
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(bytes(data)).decode("ascii")}


def utf8(data: bytes | str, what: str = "message") -> str:
    """``data`` as text, or BadRecord naming the first byte that is not UTF-8."""
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord(f"{what} is not valid UTF-8: byte 0x{data[exc.start]:02x} at position {exc.start}") from None


class Decoder:
    """Decodes messages under one set of options; ``feature_names`` and ``num_features`` describe the input."""

    def __init__(self, options: BrokerOptions):
        self.options = options
        self.csv = options.format == "csv"
        if self.csv:
            roles = {r for r in options.roles() if r}
            self.columns = list(options.columns)
            self._features = [i for i, n in enumerate(self.columns) if n not in roles]
            self.feature_names: list[str] | None = [self.columns[i] for i in self._features]
            self._role = {r: (self.columns.index(getattr(options, r)) if getattr(options, r) else None)
                          for r in ("label", "experience", "key", "timestamp")}
            self.num_features = len(self._features)
        elif options.features:
            self.feature_names = list(options.features)
            self.num_features = len(options.features)
        else:
            self.feature_names = None
            self.num_features = options.num_features

    # -- entry points ---------------------------------------------------------------------------
    def decode(self, data: bytes | str) -> Decoded:
        """A message's bytes (one JSON object, or one CSV line) as a record; BadRecord with the reason."""
        if not self.csv and _fast_json is not None:
            try:
                obj = _fast_json(data)
            except ValueError:
                pass  # the standard parser below gives the reason (or accepts NaN, huge integers …)
            else:
                if isinstance(obj, dict):
                    return self.decode_object(obj)
        text = utf8(data)
        if self.csv:
            return self._csv(text)
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise BadRecord(f"not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRecord("not valid JSON: nested too deeply") from None
        if not isinstance(obj, dict):
            raise BadRecord(f"not a JSON object (got a {_kind(obj)})")
        return self.decode_object(obj)

    def decode_object(self, obj: Mapping[str, Any]) -> Decoded:
        """A parsed JSON object (or a Redis entry's field map, values as text or bytes) as a record."""
        o = self.options
        if o.features:
            x = np.array([_number(_field(obj, name), f"feature field {name!r}", missing=name not in obj) for name in o.features], dtype=np.float64)
        else:
            x = _array(obj, o.features_field, o.num_features)
        x32 = _float32(x, [f"feature field {n!r}" for n in o.features] if o.features else None, o.features_field)
        label = _label(_field(obj, o.label) if o.label in obj else None, f"label field {o.label!r}")
        experience = None
        if o.experience:
            if o.experience not in obj or _field(obj, o.experience) is None:
                raise BadRecord(f"experience field {o.experience!r} is missing")
            experience = _experience(_field(obj, o.experience), f"experience field {o.experience!r}")
        key = None
        if o.key:
            value = _field(obj, o.key)
            if value is None or isinstance(value, (dict, list)):
                raise BadRecord(f"key field {o.key!r} is {'missing' if value is None else 'not text or a number'}")
            key = _text(value)
        timestamp = None
        if o.timestamp:
            timestamp = _timestamp(_field(obj, o.timestamp), f"timestamp field {o.timestamp!r}")
        return Decoded(x32, label, experience, key, timestamp)

    # -- csv ------------------------------------------------------------------------------------
    def _csv(self, text: str) -> Decoded:
        line = text.rstrip("\r\n")
        if "\n" in line or "\r" in line:
            raise BadRecord("a csv message must be one line (it holds a line break)")
        try:
            rows = list(csv.reader([line]))
        except csv.Error as exc:
            raise BadRecord(f"unparseable CSV: {exc}") from None
        fields = rows[0] if rows else []
        if len(fields) != len(self.columns):
            raise BadRecord(f"expected {len(self.columns)} columns, got {len(fields)}")
        x = np.array([_number(fields[i], f"feature column {self.columns[i]!r}") for i in self._features], dtype=np.float64)
        x32 = _float32(x, [f"feature column {self.columns[i]!r}" for i in self._features], "")
        role = self._role
        label = _label(fields[role["label"]], f"label column {self.options.label!r}")
        experience = None
        if role["experience"] is not None:
            experience = _experience(fields[role["experience"]], f"experience column {self.options.experience!r}")
        key = None
        if role["key"] is not None:
            key = fields[role["key"]].strip()
            if not key:
                raise BadRecord(f"key column {self.options.key!r} is empty")
        timestamp = None
        if role["timestamp"] is not None:
            timestamp = _timestamp(fields[role["timestamp"]], f"timestamp column {self.options.timestamp!r}")
        return Decoded(x32, label, experience, key, timestamp)


# -- value checks -------------------------------------------------------------------------------------
def _field(obj: Mapping[str, Any], name: str) -> Any:
    value = obj.get(name)
    if isinstance(value, (bytes, bytearray)):  # a Redis field map
        value = utf8(value, f"field {name!r}")
    return value


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _number(value: Any, what: str, missing: bool = False) -> float:
    if missing:
        raise BadRecord(f"{what} is missing")
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise BadRecord(f"{what} is not a number: {_kind(value)}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadRecord(f"{what} is not a number: {short(value)}") from None
    elif isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            raise BadRecord(f"{what} is an integer beyond float32's range (±3.4e38)") from None
    if not math.isfinite(value):
        raise BadRecord(f"{what} is {value} (NaN or infinite)")
    return value


def _array(obj: Mapping[str, Any], name: str, width: int) -> np.ndarray:
    if name not in obj:
        raise BadRecord(f"features field {name!r} is missing")
    value = obj[name]
    if isinstance(value, (bytes, bytearray, str)):  # a Redis field holding a JSON array
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRecord(f"features field {name!r} is not a JSON array of numbers") from None
    if not isinstance(value, list):
        raise BadRecord(f"features field {name!r} is not an array: {_kind(value)}")
    if len(value) != width:
        raise BadRecord(f"features field {name!r} has {len(value)} values, expected num_features = {width}")
    if set(map(type, value)) <= _PLAIN_NUMBERS:
        # The common case in one numpy call (the per-value checks below were ~80% of a reader's time);
        # anything unusual (a huge integer, NaN, infinity) falls through to them for its reason.
        try:
            x = np.array(value, dtype=np.float64)
        except OverflowError:
            x = None
        if x is not None and np.isfinite(x).all():
            return x
    return np.array([_number(v, f"features field {name!r}[{i}]") for i, v in enumerate(value)], dtype=np.float64)


_PLAIN_NUMBERS = {int, float}  # exactly these types: bool is a subclass of int and must be refused


def _float32(x: np.ndarray, names: list[str] | None, array: str) -> np.ndarray:
    """``x`` as float32, or BadRecord naming the first value beyond float32's range."""
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x.astype(np.float32)
    if np.isfinite(x32).all():
        return x32
    i = int(np.flatnonzero(~np.isfinite(x32))[0])
    what = names[i] if names is not None else f"features field {array!r}[{i}]"
    raise BadRecord(f"{what} is {x[i]:g}, beyond float32's range (±3.4e38)")


def _text(value: Any) -> str:
    """A label or key as text: strings trimmed; integral numbers without a fraction (3.0 → "3")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _label(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise BadRecord(f"{what} is not text or a number: {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRecord(f"{what} is {value} (NaN or infinite)")
    text = _text(value)
    return text or None


def _experience(value: Any, what: str) -> int:
    if isinstance(value, bool) or isinstance(value, (dict, list)) or value is None:
        raise BadRecord(f"{what} is not an integer: {_kind(value)}")
    if isinstance(value, int):
        number: float | int = value
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise BadRecord(f"{what} is not an integer: {short(value)}") from None
        if not number.is_integer():
            raise BadRecord(f"{what} is not a non-negative integer below 2^53: {short(value)}")
    if not 0 <= number < MAX_EXPERIENCE:
        raise BadRecord(f"{what} is not a non-negative integer below 2^53: {short(value)}")
    return int(number)


def _timestamp(value: Any, what: str) -> float | str | None:
    if value is None:
        return None
    if isinstance(value, (bool, dict, list)):
        raise BadRecord(f"{what} is not a number or text: {_kind(value)}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise BadRecord(f"{what} is {value} (NaN or infinite)")
        return value
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text

