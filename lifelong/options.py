"""Typed option schemas for components: a dataclass per component, validated from TOML values.

A component declares its options as a dataclass whose fields carry types and defaults, and
optionally ``field(metadata={"help": "..."})``. Validation turns a TOML table into an instance
and names the field path and the expected type on any mismatch, before anything runs.

An option whose name is a Python keyword (EWC's ``lambda``) is a field with another name and
``metadata={"key": "lambda"}``: the key is what pipelines, ``--set``, the resolved config and the
docs use; the field name is only what the code reads.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from lifelong.errors import ConfigError


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


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(where, f"expected one of {type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(where, f"expected {type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected {type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported option type {tp!r} at {where}")
    raise ConfigError(where, f"expected {type_name(tp)}, got {value!r}")


def key(f: dataclasses.Field) -> str:
    """The option's name in pipelines: the field's ``key`` metadata, else the field name."""
    return f.metadata.get("key", f.name)


def validate(schema: type, data: dict[str, Any] | None, where: str) -> Any:
    """Build ``schema`` from ``data``; unknown keys and wrong types raise ConfigError naming ``where.key``."""
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
        values[f.name] = _coerce(value, hints[f.name], f"{where}.{name}")
    instance = schema(**values)
    check = getattr(instance, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
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
