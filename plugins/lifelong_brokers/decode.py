"""Decoding broker messages into records: float32 features, label text, experience id, key, timestamp.

:class:`Decoder` (built from :class:`~lifelong_brokers.options.BrokerOptions`) turns the bytes of a
message (``decode``) or an already-parsed JSON object / Redis field map (``decode_object``) into a
:class:`Decoded`, or raises :class:`BadRecord` whose message is the reason for the dead-letter file,
naming the field or column. ``decode_many`` decodes what one poll of a broker returned, as
:class:`Records`: row i is what ``decode`` gives message i, or its reason. :func:`raw_record` turns
the original bytes into what a dead letter carries.

**Why in bulk.** The reader decodes while the trainer trains, and a microsecond of Python per record
is a microsecond of a CPU per record (at 15 µs a record the Kafka reader fed the pipeline at a third
of its npz rate). ``decode_many`` parses the JSON of a whole poll, converts the feature arrays with
one numpy call and maps labels through a memo. With ``features_field`` (one array of features) and
pysimdjson installed (the kafka and redis extras bring it), each array is read straight into a
float64 buffer, with no Python float per value: 2.7 µs a record instead of 4.0 µs for the parse of
64 features (orjson and one numpy call); the guards that keep it reading exactly what ``decode``
reads are in :meth:`Decoder._parse_simd`. A row that
anything in this path could read differently from ``decode`` is decoded by ``decode`` instead:
messages that are not bytes, a poll holding ``true`` or ``false`` anywhere (numpy would read a
boolean as a number) goes message by message for those messages, and a row whose features, label,
experience, key or timestamp the bulk checks do not pass is decoded alone, so that its reason is
the one ``decode`` gives. CSV messages are decoded one by one.

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
from typing import Any, Mapping, Sequence

import numpy as np

try:  # orjson parses a record several times faster than json (JSON parsing is most of a reader's time)
    from orjson import loads as _fast_json
except ImportError:  # optional: the kafka and redis extras bring it
    _fast_json = None
try:  # simdjson reads a feature array straight into a float64 buffer: no Python float per value
    import simdjson as _simdjson
except ImportError:  # optional, as orjson: without it the array goes through Python floats
    _simdjson = None

from lifelong_brokers.options import BrokerOptions
from lifelong_streams.records import BadRecord, short

__all__ = ["BadRecord", "Decoded", "Decoder", "Records", "raw_record"]

MAX_EXPERIENCE = 2**53  # experience ids must be below this (exact in float64)
LABEL_MEMO = 4096  # label values remembered with their text; a stream of ever new labels stops adding at this


@dataclass
class Decoded:
    """One good record. ``experience`` is None when the stream has no experience field."""

    x: np.ndarray  # float32, shape (num_features,)
    label: str | None  # None: unlabeled
    experience: int | None
    key: str | None  # None: no key field configured (the reader supplies the message key / entry id)
    timestamp: float | str | None


@dataclass
class Records:
    """Messages decoded together (:meth:`Decoder.decode_many`): row i is message i, good or in ``bad``."""

    x: np.ndarray  # float32, shape (messages, num_features); a bad row's values mean nothing
    labels: list[str | None]
    experiences: list[int | None]
    keys: list[str | None]
    timestamps: list[float | str | None]
    bad: dict[int, str]  # row → the reason it is a dead letter (BadRecord's message); its other fields are None

    def __len__(self) -> int:
        return len(self.labels)


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
        self._label_texts: dict[Any, str | None] = {}  # a JSON label value → its text (decode_many)
        self._simd = _simdjson.Parser() if _simdjson is not None and not self.csv and not options.features else None
        if self._simd is not None:  # the byte patterns _parse_simd checks a message for (see there)
            self._quoted = b'"' + options.features_field.encode() + b'"'
            self._roles = [b'"' + r.encode() + b'"' for r in options.roles() if r]

    # -- entry points ---------------------------------------------------------------------------
    def decode_many(self, messages: Sequence[Any]) -> Records:
        """Each message as :meth:`decode` (bytes, text) or :meth:`decode_object` (a mapping) reads it,
        in bulk where it can (see the module docstring)."""
        n = len(messages)
        out = Records(np.zeros((n, self.num_features), dtype=np.float32), [None] * n, [None] * n, [None] * n, [None] * n, {})
        alone = self._bulk(messages, out) if n and not self.csv and _fast_json is not None else range(n)
        for i in alone:
            message = messages[i]
            try:
                r = self.decode_object(message) if isinstance(message, Mapping) else self.decode(message)
            except BadRecord as bad:
                out.bad[i] = str(bad)
                out.labels[i] = out.experiences[i] = out.keys[i] = out.timestamps[i] = None  # the bulk pass may have filled some
                continue
            out.x[i] = r.x
            out.labels[i], out.experiences[i], out.keys[i], out.timestamps[i] = r.label, r.experience, r.key, r.timestamp
        return out

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
        key = _key(_field(obj, o.key), f"key field {o.key!r}") if o.key else None
        timestamp = None
        if o.timestamp:
            timestamp = _timestamp(_field(obj, o.timestamp), f"timestamp field {o.timestamp!r}")
        return Decoded(x32, label, experience, key, timestamp)

    # -- json in bulk ---------------------------------------------------------------------------
    def _bulk(self, messages: Sequence[Any], out: Records) -> list[int]:
        """Decode what it can of ``messages`` into ``out``; returns the rows left to decode one by one."""
        n = len(messages)
        if any(type(m) is not bytes for m in messages):
            return list(range(n))
        doubtful: set[int] = set()
        joined = b"\n".join(messages)
        if b"true" in joined or b"false" in joined:  # a boolean would read as 1.0 / 0.0 in numpy
            doubtful = {i for i, m in enumerate(messages) if b"true" in m or b"false" in m}
        parsed = self._parse_simd(messages, joined, doubtful) if self._simd is not None else self._parse(messages, doubtful)
        if parsed is None:
            return list(range(n))
        rows, x, values, alone = parsed
        if not rows:
            return alone
        with np.errstate(over="ignore", invalid="ignore"):
            x32 = x.astype(np.float32)
        finite = np.isfinite(x32).all(axis=1).tolist()
        out.x[rows] = x32
        texts = self._label_texts
        has_experience, has_key, has_timestamp = bool(self.options.experience), bool(self.options.key), bool(self.options.timestamp)
        for j, (i, (label, experience, key, timestamp)) in enumerate(zip(rows, values)):
            try:
                if not finite[j]:
                    raise BadRecord("")
                try:
                    out.labels[i] = texts[label]
                except KeyError:
                    out.labels[i] = text = _label(label, "")
                    if len(texts) < LABEL_MEMO:
                        texts[label] = text
                if has_experience:
                    out.experiences[i] = _experience(experience, "")  # a missing one raises too
                if has_key:
                    out.keys[i] = _key(key, "")
                if has_timestamp:
                    out.timestamps[i] = _timestamp(timestamp, "")
            except (BadRecord, TypeError):  # TypeError: an unhashable label (a list, an object)
                alone.append(i)  # decoded alone, which gives its reason
        return alone

    def _parse(self, messages: Sequence[bytes], doubtful: set[int]) -> tuple[list[int], np.ndarray, list[tuple], list[int]] | None:
        """orjson: (the rows read, their features as one float64/int array, their (label, experience, key,
        timestamp) values, the rows left to decode alone); None: decode every message alone."""
        n = len(messages)
        try:
            objs = [_fast_json(m) for m in messages]
        except ValueError:
            objs = [_or_none(m) for m in messages]
        rows = [i for i, obj in enumerate(objs) if type(obj) is dict and i not in doubtful]
        alone = sorted(set(range(n)) - set(rows))
        if not rows:
            return rows, np.zeros((0, self.num_features)), [], alone
        good = [objs[i] for i in rows]
        o = self.options
        if o.features:
            features = [[obj.get(name) for name in o.features] for obj in good]
        else:
            features = [obj.get(o.features_field) for obj in good]
        try:
            x = np.array(features)
        except (ValueError, TypeError, OverflowError):  # ragged, or an integer beyond int64
            return None
        if x.dtype.kind not in "fiu" or x.shape != (len(rows), self.num_features):
            return None  # text, null, nested or missing values somewhere: each message alone
        label, experience, key, timestamp = o.label, o.experience, o.key, o.timestamp
        values = [(obj.get(label), obj.get(experience) if experience else None, obj.get(key) if key else None,
                   obj.get(timestamp) if timestamp else None) for obj in good]
        return rows, x, values, alone

    def _parse_simd(self, messages: Sequence[bytes], joined: bytes, doubtful: set[int]) -> tuple[list[int], np.ndarray, list[tuple], list[int]]:
        """simdjson, for the ``features_field`` array: each array read as a float64 buffer; the same tuple as
        :meth:`_parse`.

        A message goes alone, to the parsers ``decode`` uses, wherever simdjson could read it differently
        from them. simdjson keeps the first of duplicate keys (orjson the last), and ``as_buffer`` flattens
        a nested array. So the poll goes through :meth:`_parse` unless it holds exactly one ``[`` and one
        quoted array field name per message (every message read here has its array: then none has two),
        and no ``\\u`` escape (a name spelled with escapes would hide from those counts); and a message
        goes alone with a role's quoted name (label …) twice, an array of the wrong length or not of
        numbers only, an object where a value belongs, or any error."""
        n = len(messages)
        if joined.count(b"[") != n or joined.count(self._quoted) != n or b"\\u" in joined:
            return self._parse(messages, doubtful)
        o, parser, width, roles = self.options, self._simd, self.num_features, self._roles
        label, experience, key, timestamp = o.label, o.experience, o.key, o.timestamp
        Array, Object = _simdjson.Array, _simdjson.Object  # type: ignore[union-attr]
        rows: list[int] = []
        buffers: list[bytes] = []
        values: list[tuple] = []
        alone: list[int] = []
        for i, m in enumerate(messages):
            doc = array = None
            try:
                if i in doubtful:
                    raise TypeError
                for role in roles:
                    if m.count(role) > 1:
                        raise TypeError
                doc = parser.parse(m)
                array = doc.get(o.features_field) if type(doc) is Object else None
                if type(array) is not Array or len(array) != width:
                    raise TypeError
                buffer = array.as_buffer(of_type="d")
                row = (doc.get(label), doc.get(experience) if experience else None, doc.get(key) if key else None,
                       doc.get(timestamp) if timestamp else None)
                if Object in (type(row[0]), type(row[1]), type(row[2]), type(row[3])):
                    raise TypeError
            except (ValueError, TypeError, RuntimeError, KeyError):  # not JSON, not numbers, beyond int64 …
                alone.append(i)
                continue
            finally:
                del doc, array  # the parser refuses to parse again while a document of its last parse lives
            rows.append(i)
            buffers.append(buffer)
            values.append(row)
        x = np.frombuffer(b"".join(buffers), dtype=np.float64).reshape(len(rows), width)
        return rows, x, values, alone

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
def _or_none(message: bytes) -> Any:
    """The parsed JSON, or None where orjson refuses it (decode then gives the reason, or accepts it)."""
    try:
        return _fast_json(message)
    except ValueError:
        return None


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


def _key(value: Any, what: str) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise BadRecord(f"{what} is {'missing' if value is None else 'not text or a number'}")
    return _text(value)


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

