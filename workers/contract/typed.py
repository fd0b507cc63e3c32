"""Typed records read from outside (a worker's message, a results file): dataclasses whose
annotations are checked when a value comes in, so a value that does not fit is named by its
field, never a crash later. Plain dataclasses and no validation library, because the same
definitions run in every worker env, which holds only numpy, msgpack and its toolchain.

Supported annotations: str, int, float, bool, Any, `X | None`, `list[X]`, `dict[str, X]`,
`tuple[X, ...]`, `numpy.ndarray` (the worker protocol carries arrays), and nested typed
dataclasses. A float field takes an int; numbers must be finite unless the field says otherwise
in its metadata (`finite=False`). A field whose metadata says `plain=True` holds, below its
annotation, only what a JSON results file can hold (strings, finite numbers, booleans, null,
lists, tables with string keys, nested at most PLAIN_DEPTH deep): what a worker reports in free
form is checked before it reaches a record."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
PLAIN_DEPTH = 32


class Invalid(ValueError):
    """A value that does not fit its field; the message names the field."""


class _NotFinite(Invalid):
    """Of the right type but not finite: reported as such, not as a type mismatch."""


def field(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A dataclass field with its documentation: `field(None, doc="...", unit="s")`."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is not None:
        return {list: "a list", dict: "a table", tuple: "a list"}.get(origin, str(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a table"
    if tp is np.ndarray:
        return "an array"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def check(value: Any, tp: Any, where: str, finite: bool = True) -> Any:
    """`value` as type `tp` (nested dataclasses built), or Invalid naming `where`."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return check(value, arg, where, finite)
            except _NotFinite:
                raise
            except Invalid:
                pass
        raise Invalid(f"{where}: expected {_describe(tp)}, got {_short(value)}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if finite and not math.isfinite(value):
                raise _NotFinite(f"{where}: expected a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list or origin is tuple:
        if isinstance(value, (list, tuple)):
            args = typing.get_args(tp)
            item = args[0] if args else Any
            out = [check(v, item, f"{where}[{i}]", finite) for i, v in enumerate(value)]
            return out if origin is list else tuple(out)
    elif origin is dict:
        if isinstance(value, dict):
            _, item = typing.get_args(tp) or (str, Any)
            for k in value:
                if not isinstance(k, str):
                    raise Invalid(f"{where}: key {k!r} is not a string")
            return {k: check(v, item, f"{where}.{k}", finite) for k, v in value.items()}
    elif tp is np.ndarray:
        if isinstance(value, np.ndarray):
            return value
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, where, "refuse")
    else:
        raise TypeError(f"typed: unsupported annotation {tp!r} at {where}")
    raise Invalid(f"{where}: expected {_describe(tp)}, got {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def build(cls: type[T], data: Any, where: str, *, extra: str = "refuse") -> T:
    """An instance of the dataclass `cls` from a mapping, every field checked; Invalid says
    `WHERE: field PATH: what is wrong`. Missing fields take their defaults (a field without one
    is required). Unknown keys are refused (`extra="refuse"`) or dropped (`extra="drop"`)."""
    if not isinstance(data, dict):
        raise Invalid(f"{where}: expected a table, got {_short(data)}")
    try:
        return _build(cls, data, "", extra)
    except Invalid as e:
        raise Invalid(f"{where}: field {e}") from None


def _build(cls: Any, data: dict[str, Any], path: str, extra: str) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)  # a peer's keys may be of any type
    if unknown and extra == "refuse":
        raise Invalid(f"{path + '.' if path else ''}{unknown[0]}: unknown")
    values = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise Invalid(f"{sub}: missing")
            continue
        values[name] = check(data[name], hints[name], sub, f.metadata.get("finite", True))
        if f.metadata.get("plain"):
            plain(values[name], sub)
    return cls(**values)


def plain(value: Any, where: str, depth: int = 0) -> None:
    """Invalid unless `value` is JSON-plain data (see the module's docstring)."""
    if depth > PLAIN_DEPTH:
        raise Invalid(f"{where}: nested more than {PLAIN_DEPTH} deep")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid(f"{where}: expected a finite number, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            plain(v, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise Invalid(f"{where}: key {_short(k)} is not a string")
            plain(v, f"{where}.{k}", depth + 1)
        return
    raise Invalid(f"{where}: expected plain data (text, numbers, lists, tables), got {type(value).__name__}")


def to_dict(obj: Any) -> dict[str, Any]:
    """A typed record as plain data (JSON or msgpack), in field order."""
    return dataclasses.asdict(obj)


def field_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, unit, meaning) per field, for the generated field tables."""
    hints = _hints(cls)
    return [(f.name, _describe(hints[f.name]), f.metadata.get("unit", ""), f.metadata.get("doc", ""))
            for f in dataclasses.fields(cls)]
