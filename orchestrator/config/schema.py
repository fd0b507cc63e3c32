"""The matrix file's JSON Schema (draft 2020-12), generated from the same declarations the
loader checks against (orchestrator/config/matrix.py, the backend registry), so an editor
validates a matrix as `orchestrate` will. Checks that need the host (envs, files on disk) or
span sections (the report baseline is an enabled cell) stay with the loader."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from orchestrator.config.fields import choices, declared, file_type, required
from orchestrator.config.matrix import Cell, Matrix, sections
from workers.contract.backends import BACKENDS, Backend

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def _type(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp) or tp
    return {"type": _JSON_TYPES[origin]} if origin in _JSON_TYPES else {}


def _anchored(pattern: str) -> str:
    return f"^(?:{pattern})$"


def field_schema(cls: type, f: dataclasses.Field) -> dict[str, Any]:
    """One field: its file type, meaning, default and rules."""
    meta = f.metadata
    if "schema" in meta:
        return {"description": meta["doc"], **meta["schema"]}
    out: dict[str, Any] = {"description": meta["doc"], **_type(file_type(cls, f))}
    if f.default is not dataclasses.MISSING and f.default is not None:
        out["default"] = f.default
    if (allowed := choices(f)) is not None:
        out["enum"] = list(allowed)
    for rule, keyword in (("gt", "exclusiveMinimum"), ("ge", "minimum"), ("le", "maximum"), ("multiple_of", "multipleOf")):
        if meta.get(rule) is not None:
            out[keyword] = meta[rule]
    if "pattern" in meta:
        out["pattern"] = _anchored(meta["pattern"][0].pattern)
    return out


def _table(cls: type, doc: str) -> dict[str, Any]:
    """A section: its own fields, and sub-tables for fields declared with `table`."""
    fields = declared(cls)
    props = {f.name: field_schema(cls, f) for f in fields if "table" not in f.metadata}
    for table in dict.fromkeys(f.metadata["table"] for f in fields if "table" in f.metadata):
        group = [f for f in fields if f.metadata.get("table") == table]
        props[table] = {"type": "object", "additionalProperties": False,
                        "properties": {f.name: field_schema(cls, f) for f in group}}
    out: dict[str, Any] = {"description": doc, "type": "object", "additionalProperties": False, "properties": props}
    if need := [f.name for f in fields if required(f) and "table" not in f.metadata]:
        out["required"] = need
    return out


def _backend_rules(b: Backend) -> dict[str, Any]:
    """What a cell of backend `b` may hold: its precisions, attention, hardware and options."""
    props: dict[str, Any] = {
        "precision": {"enum": list(b.precisions)},
        "attention": {"enum": list(b.attention)},
        **{name: {"description": o.help, "enum": list(o.values)} for name, o in b.options.items()},
    }
    if b.compute_units:
        props |= {"compute_unit": {"enum": list(b.compute_units)}, "device": False}
        need = ["compute_unit"]
    else:
        props |= {"device": {"pattern": _anchored(b.devices)}, "compute_unit": False}
        need = ["device"]
    return {"if": {"properties": {"backend": {"const": b.name}}, "required": ["backend"]},
            "then": {"properties": props, "required": need}}


def _cells(doc: str) -> dict[str, Any]:
    cell = _table(Cell, "one measured configuration; a backend's options sit beside the other fields")
    cell["allOf"] = [_backend_rules(b) for b in BACKENDS.values()]
    del cell["additionalProperties"]
    cell["unevaluatedProperties"] = False  # the backend's options are allowed through its `then`
    return {"description": doc, "type": "array", "minItems": 1, "items": cell}


def matrix_schema() -> dict[str, Any]:
    """The JSON Schema of a matrix file."""
    docs = {f.name: f.metadata["doc"] for f in dataclasses.fields(Matrix) if "doc" in f.metadata}
    props = {name: _table(cls, docs[name]) for name, cls in sections().items()}
    props["cells"] = _cells(docs["cells"])
    return {
        "$schema": DRAFT,
        "title": "coreml-diffusion-benchmarks matrix",
        "description": "A study: the model, inputs, timing, power and the cells to measure (TOML).",
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "cells"],
        "properties": props,
    }
