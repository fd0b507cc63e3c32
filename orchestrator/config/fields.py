"""Matrix fields declared once, as dataclass fields: the type is the annotation, the default the
dataclass default, and the rules (meaning, choices, bounds, pattern) the field's metadata. This
module reads a TOML table against such a declaration, collecting every problem rather than
stopping at the first, so a user fixes a matrix in one pass; the JSON Schema is generated from
the same declarations (orchestrator/config/schema.py).

In the file a field's type is its annotation without `None` (TOML has no null: leaving a key
out gives the default), and a `Path` is a string, expanded (`${VAR:-default}`, `~`) relative to
the matrix's folder."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Collection
from functools import cache
from pathlib import Path
from typing import Any

from orchestrator.config.paths import expand
from workers.contract.typed import Invalid, check
from workers.contract.typed import field as typed_field

Choices = Collection[Any] | Callable[[], Collection[Any]]


def setting(default: Any = dataclasses.MISSING, *, doc: str, factory: Any = dataclasses.MISSING,
            choices: Choices | None = None, gt: float | None = None, ge: float | None = None,
            le: float | None = None, multiple_of: int | None = None, pattern: tuple[re.Pattern[str], str] | None = None,
            table: str | None = None, file_type: Any = None, schema: dict[str, Any] | None = None,
            extra: bool = False) -> Any:
    """A matrix field. `choices` may be a function (a registry read when the matrix is);
    every number has a range (`gt` or `ge`, and `le`), so nothing in a matrix can ask for an
    unmeasurable study or an absurd allocation; `pattern` is (regex, what it asks for); `table` reads the field from a sub-table
    (`[equivalence.reference]`); `file_type` and `schema` describe a field whose form in the file
    differs from its annotation; `extra` marks the mapping that collects keys the section's code
    checks itself (a cell's backend options)."""
    rules = {"choices": choices, "gt": gt, "ge": ge, "le": le, "multiple_of": multiple_of, "pattern": pattern,
             "table": table, "file_type": file_type, "schema": schema, "extra": extra or None}
    return typed_field(default, factory=factory, doc=doc, **{k: v for k, v in rules.items() if v is not None})


class Problems:
    """Every problem found in one matrix file, each as `FILE: WHERE: what is wrong`."""

    def __init__(self, path: Path | str):
        self.path = path
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{self.path}: {where}: {message}")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def declared(cls: type) -> list[dataclasses.Field]:
    """The fields a section's table holds (in declaration order), the `extra` mapping left out."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("extra")]


def file_type(cls: type, f: dataclasses.Field) -> Any:
    """The field's type as written in the file."""
    tp = f.metadata.get("file_type") or _hints(cls)[f.name]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            tp = args[0]
    return str if tp is Path else tp


def is_path(cls: type, f: dataclasses.Field) -> bool:
    return Path in (_hints(cls)[f.name], *typing.get_args(_hints(cls)[f.name]))


def required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def choices(f: dataclasses.Field) -> Collection[Any] | None:
    c = f.metadata.get("choices")
    return c() if callable(c) else c


def read(cls: type, raw: Any, where: str, problems: Problems, base: Path | None = None,
         extra: Collection[str] = ()) -> dict[str, Any]:
    """The values of `cls`'s fields from the table `raw`, every problem added to `problems`.
    A field that is missing or wrong takes its default (None when it is required), so the
    section's own checks can go on; keys named in `extra` are known but left to the caller."""
    fields = declared(cls)
    own = [f for f in fields if "table" not in f.metadata]
    tables: dict[str, list[dataclasses.Field]] = {}
    for f in fields:
        if "table" in f.metadata:
            tables.setdefault(f.metadata["table"], []).append(f)
    if not isinstance(raw, dict):
        problems.add(where, f"expected a table, got {type(raw).__name__}")
        raw = {}
    known = {*(f.name for f in own), *tables, *extra}
    for key in sorted(raw.keys() - known):
        problems.add(where, f"unknown field {key!r} (known: {', '.join(sorted(known))})")
    out = {f.name: _value(cls, f, raw, where, problems, base) for f in own}
    for table, group in tables.items():
        sub_where = f"{where[:-1]}.{table}]"
        sub = raw.get(table, {})
        if not isinstance(sub, dict):
            problems.add(sub_where, f"expected a table, got {type(sub).__name__}")
            sub = {}
        names = {f.name for f in group}
        for key in sorted(sub.keys() - names):
            problems.add(sub_where, f"unknown field {key!r} (known: {', '.join(sorted(names))})")
        out.update({f.name: _value(cls, f, sub, sub_where, problems, base) for f in group})
    return out


def _fallback(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _value(cls: type, f: dataclasses.Field, raw: dict[str, Any], where: str, problems: Problems,
           base: Path | None) -> Any:
    name = f.name
    if name not in raw:
        if required(f):
            problems.add(where, f"field {name!r} is required")
        return _fallback(f)
    try:
        value = check(raw[name], file_type(cls, f), f"field {name!r}")
    except Invalid as e:
        problems.add(where, str(e))
        return _fallback(f)
    for message in broken_rules(f, value):
        problems.add(where, f"field {name!r}: {message}")
    if is_path(cls, f):
        try:
            return expand(value, base or Path.cwd())
        except KeyError as e:
            problems.add(where, f"field {name!r}: environment variable {e.args[0]} is not set and has no default")
            return None
    return value


def broken_rules(f: dataclasses.Field, value: Any) -> list[str]:
    """What is wrong with a value of the right type, by the field's rules."""
    meta = f.metadata
    out = []
    allowed = choices(f)
    if allowed is not None and value not in allowed:
        out.append(f"{value!r} is not one of {', '.join(sorted(map(str, allowed)))}")
    gt, ge, le, step = meta.get("gt"), meta.get("ge"), meta.get("le"), meta.get("multiple_of")
    if ((gt is not None and value <= gt) or (ge is not None and value < ge) or (le is not None and value > le)
            or (step and value % step)):
        out.append(f"must be {describe_range(f)}, got {value}")
    if "pattern" in meta:
        regex, asks = meta["pattern"]
        if not regex.fullmatch(value):
            out.append(f"{asks}, got {value!r}")
    return out


def describe_range(f: dataclasses.Field) -> str:
    """The field's numeric rules in words: `> 0 and <= 1000 and a multiple of 8`."""
    meta = f.metadata
    parts = [f"{op} {_number(meta[rule])}" for rule, op in (("gt", ">"), ("ge", ">="), ("le", "<="))
             if meta.get(rule) is not None]
    parts += [
             f"a multiple of {meta['multiple_of']}" if meta.get("multiple_of") else ""]
    return " and ".join(p for p in parts if p)


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"
