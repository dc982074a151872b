"""Typed option schemas for components: a dataclass per component, validated from TOML values.

A component declares its options as a dataclass whose fields carry types and defaults, and
optionally ``field(metadata={"help": "..."})``. Validation turns a TOML table into an instance
and names the field path and the expected type on any mismatch, before anything runs.

An option whose name is a Python keyword (EWC's ``lambda``) is a field with another name and
``metadata={"key": "lambda"}``: the key is what pipelines, ``--set``, the resolved config and the
docs use; the field name is only what the code reads.

Every value is checked generically before the schema's own ``check()`` sees it, so no option needs
to repeat these (:func:`check_value`): a ``float`` is a finite number (NaN and ±infinity are
refused, unless the field's metadata says ``allow_inf=True``: NaN never passes) within float32's
range (a larger number is infinity in training); an ``int`` fits
in 64 bits; a string has no NUL character and at most :data:`MAX_STRING` characters (metadata
``max_length``); a list has at most :data:`MAX_ITEMS` items (metadata ``max_items``); a free-form
table (``dict``/``Any``) is nested at most :data:`MAX_DEPTH` deep and its leaves obey the same
rules. Ranges particular to an option (a rate in [0, 1), a positive size) are the schema's
``check()``; sizes that allocate memory are estimated with :mod:`lifelong.resources` by the
component that allocates them. Messages quote values cut to 200 characters (:func:`brief`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping

from lifelong.errors import ConfigError, brief

INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what torch, numpy and every file format take
MAX_STRING = 4096  # characters of a string option (PATH_MAX on Linux); field metadata max_length raises it
MAX_ITEMS = 1_000_000  # items of a list option; field metadata max_items changes it
FLOAT32_MAX = 3.4028234663852886e38  # a larger number becomes infinity in float32, the training dtype
MAX_DEPTH = 16  # nesting of a free-form table option (and of a pipeline: see lifelong.config)


@dataclasses.dataclass
class NoOptions:
    """Options schema of a component that takes none."""


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


class OutOfRange(ConfigError):
    """A value of the right type that the generic checks refuse (NaN, a 65-bit integer, a 1 MB string)."""


def _check_float(value: float, where: str, meta: Mapping[str, Any]) -> float:
    if math.isnan(value):
        raise OutOfRange(where, "expected a number, got nan")
    if math.isinf(value) and not meta.get("allow_inf"):
        raise OutOfRange(where, f"expected a finite number, got {value}")
    if FLOAT32_MAX < abs(value) < math.inf:
        raise OutOfRange(where, f"{value} is beyond the float32 range training computes in (at most {FLOAT32_MAX:.4g})")
    return value


def _check_int(value: int, where: str) -> int:
    if not INT_MIN <= value <= INT_MAX:
        raise OutOfRange(where, f"{brief(value)} is out of range: an integer option fits in 64 bits (at most {INT_MAX})")
    return value


def _check_str(value: str, where: str, meta: Mapping[str, Any]) -> str:
    limit = meta.get("max_length", MAX_STRING)
    if len(value) > limit:
        raise OutOfRange(where, f"a value of {len(value)} characters is too long (at most {limit}): {brief(value, 60)}")
    if "\x00" in value:
        raise OutOfRange(where, f"a value may not contain a NUL character, got {brief(value)}")
    return value


def _check_items(value: list | tuple, where: str, meta: Mapping[str, Any]) -> None:
    limit = meta.get("max_items", MAX_ITEMS)
    if len(value) > limit:
        raise OutOfRange(where, f"a list of {len(value)} items is too long (at most {limit})")


def check_value(value: Any, where: str, meta: Mapping[str, Any] = {}, depth: int = 0) -> Any:
    """The generic checks of a free-form value (a table option's contents), recursively; returns ``value``."""
    if depth > MAX_DEPTH:
        raise OutOfRange(where, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _check_int(value, where)
    if isinstance(value, float):
        return _check_float(value, where, meta)
    if isinstance(value, str):
        return _check_str(value, where, meta)
    if isinstance(value, (list, tuple)):
        _check_items(value, where, meta)
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]", meta, depth + 1)
    elif isinstance(value, dict):
        _check_items(value, where, meta)
        for k, item in value.items():
            check_value(k, f"{where} (a key)", meta, depth + 1)
            check_value(item, f"{where}.{k}" if len(str(k)) <= 200 else f"{where}.<key>", meta, depth + 1)
    return value


def _coerce(value: Any, tp: Any, where: str, meta: Mapping[str, Any] = {}) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return check_value(value, where, meta)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in typing.get_args(tp)):
            return value
        raise ConfigError(where, f"expected one of {type_name(tp)}, got {brief(value)}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, meta)
            except ConfigError as exc:
                errors.append(exc)
        for exc in errors:
            if isinstance(exc, OutOfRange):
                raise exc  # the value had the right type (``float | None`` given nan): say what is wrong with it
        raise ConfigError(where, f"expected {type_name(tp)}, got {brief(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected {type_name(tp)}, got {brief(value)}")
        _check_items(value, where, meta)
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(v, item, f"{where}[{i}]", meta) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a table, got {brief(value)}")
        return dict(check_value(value, where, meta))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return _check_int(value, where)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                raise OutOfRange(where, f"{brief(value)} is out of range for a number") from None
            return _check_float(number, where, meta)
    elif tp is str:
        if isinstance(value, str):
            return _check_str(value, where, meta)
    else:
        raise TypeError(f"unsupported option type {tp!r} at {where}")
    raise ConfigError(where, f"expected {type_name(tp)}, got {brief(value)}")


def key(f: dataclasses.Field) -> str:
    """The option's name in pipelines: the field's ``key`` metadata, else the field name."""
    return f.metadata.get("key", f.name)


def validate(schema: type, data: dict[str, Any] | None, where: str) -> Any:
    """Build ``schema`` from ``data``; unknown keys and wrong types raise ConfigError naming ``where.key``."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(where, f"expected a table of options, got {brief(data)}")
    data = dict(data or {})
    hints = typing.get_type_hints(schema)
    fields = {key(f): f for f in dataclasses.fields(schema)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown option (known options: {known})")
    values = {}
    for name, value in data.items():
        f = fields[name]
        values[f.name] = _coerce(value, hints[f.name], f"{where}.{name}", f.metadata)
    instance = schema(**values)
    check = getattr(instance, "check", None)
    if check is not None:
        try:
            check()
        except (ValueError, ArithmeticError) as exc:
            raise ConfigError(where, str(exc)) from None
    return instance


def to_dict(options: Any) -> dict[str, Any]:
    """The options as a pipeline table (keys as in pipelines)."""
    values = dataclasses.asdict(options)
    return {key(f): values[f.name] for f in dataclasses.fields(options)}


def describe(schema: type) -> list[dict[str, Any]]:
    """Name, type, default and help of every option, for ``lifelong plugins`` and the docs."""
    hints = typing.get_type_hints(schema)
    rows = []
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append(
            {
                "name": key(f),
                "type": type_name(hints[f.name]),
                "default": default,
                "help": f.metadata.get("help", ""),
            }
        )
    return rows
