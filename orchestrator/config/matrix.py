"""Matrix files: a declarative study (model, inputs, timing, power, cells) read from TOML.

Every problem found is reported at once, each as one line naming the file, the section or cell
id, and the field, so a user fixes a matrix in one pass. Adding a cell is a config edit.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config.paths import cache_dir, expand
from orchestrator.errors import UserError
from workers.contract.backends import BACKENDS, PRECISIONS
from workers.contract.presets import PRESETS

ORDERS = ("interleaved", "sequential")
METERS = ("auto", "powermetrics", "nvml", "rapl", "none")
CELL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelSpec:
    source: str  # "synthetic" | "checkpoint"
    preset: str
    seed: int | None
    path: Path | None  # checkpoint only; synthetic files live in cache_dir
    sha256: str | None
    cache_dir: Path

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


@dataclass(frozen=True)
class InputsSpec:
    seed: int
    batch: int
    timestep: int
    sha256: dict[int, dict[str, str]]  # resolution -> {"latent": hex, "text_embedding": hex}


@dataclass(frozen=True)
class Timing:
    warmup: int
    iterations: int
    runs: int
    cooldown: str  # "fixed" | "adaptive"
    cooldown_s: float
    cooldown_min_s: float
    cooldown_max_s: float
    cooldown_margin: float
    order: str
    order_seed: int | None
    run_timeout_s: float
    min_window_s: float | None  # None: 20 update intervals of the session's meter


@dataclass(frozen=True)
class Power:
    meter: str
    interval_ms: int
    baseline_s: float
    powermetrics: str | None  # executable; CDB_POWERMETRICS overrides it
    idle_s: float  # the host's idle power is measured this long once per session (adaptive cooldown)


@dataclass(frozen=True)
class Preflight:
    load_margin: float  # a run may start once the 1-minute load average is within this of idle
    load_settle_max_s: float  # how long to wait for that before each run (0: don't wait)
    pmset: str | None  # the pmset executable (macOS power and thermal state)


@dataclass(frozen=True)
class Equivalence:
    backend: str
    env: str
    device: str
    precision: str
    mse_max: float
    cosine_min: float

    def reference_cell(self, resolution: int) -> Cell:
        return Cell(
            id=f"reference-{resolution}", label="fp32 reference", backend=self.backend, env=self.env,
            device=self.device, compute_unit=None, attention=BACKENDS[self.backend].attention[0],
            precision=self.precision, resolution=resolution, enabled=True, notes="", options={},
        )


@dataclass(frozen=True)
class Report:
    baseline: str | None  # cell id every other cell is compared with in reports


@dataclass(frozen=True)
class Cell:
    id: str
    label: str
    backend: str
    env: str
    device: str | None
    compute_unit: str | None
    attention: str
    precision: str
    resolution: int
    enabled: bool
    notes: str
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific keys

    def as_setup(self) -> dict[str, Any]:
        """The cell as the worker receives it."""
        return {
            "id": self.id, "backend": self.backend, "device": self.device, "compute_unit": self.compute_unit,
            "attention": self.attention, "precision": self.precision, "resolution": self.resolution,
            **self.options,
        }


@dataclass(frozen=True)
class Matrix:
    path: Path
    sha256: str
    model: ModelSpec
    inputs: InputsSpec
    timing: Timing
    power: Power
    preflight: Preflight
    equivalence: Equivalence
    report: Report
    cells: list[Cell]
    raw: dict[str, Any]

    @property
    def enabled_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.enabled]

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise UserError(f"{self.path}: no cell {cell_id!r} (cells: {', '.join(c.id for c in self.cells)})")

    @property
    def resolutions(self) -> list[int]:
        return sorted({c.resolution for c in self.enabled_cells})


# field -> (python types accepted, default; REQUIRED when it must be given)
REQUIRED = object()
_SECTIONS: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "model": {
        "source": ((str,), REQUIRED), "preset": ((str,), "sd15"), "seed": ((int,), 0),
        "path": ((str,), None), "sha256": ((str,), None), "cache_dir": ((str,), None),
    },
    "inputs": {
        "seed": ((int,), 0), "batch": ((int,), 2), "timestep": ((int,), 500), "sha256": ((dict,), {}),
    },
    "timing": {
        "warmup": ((int,), 1), "iterations": ((int,), 10), "runs": ((int,), 7), "cooldown": ((str,), "fixed"), "cooldown_s": ((int, float), 30.0),
        "cooldown_min_s": ((int, float), 5.0), "cooldown_max_s": ((int, float), 120.0), "cooldown_margin": ((int, float), 0.1),
        "order": ((str,), "interleaved"), "order_seed": ((int,), None), "run_timeout_s": ((int, float), 900.0),
        "min_window_s": ((int, float), None),
    },
    "power": {"meter": ((str,), "auto"), "interval_ms": ((int,), 100), "baseline_s": ((int, float), 2.0),
              "powermetrics": ((str,), None), "idle_s": ((int, float), 10.0)},
    "preflight": {"load_margin": ((int, float), 0.5), "load_settle_max_s": ((int, float), 60.0),
                  "pmset": ((str,), None)},
    "equivalence": {
        "reference": ((dict,), {}), "mse_max": ((int, float), 1e-3), "cosine_min": ((int, float), 0.999),
    },
    "report": {"baseline": ((str,), None)},
}
_REFERENCE = {
    "backend": ((str,), "diffusers"), "env": ((str,), "diffusers"), "device": ((str,), "cpu"),
    "precision": ((str,), "fp32"),
}
_CELL = {
    "id": ((str,), REQUIRED), "label": ((str,), None), "backend": ((str,), REQUIRED), "env": ((str,), None),
    "device": ((str,), None), "compute_unit": ((str,), None), "attention": ((str,), None),
    "precision": ((str,), REQUIRED), "resolution": ((int,), 512), "enabled": ((bool,), True), "notes": ((str,), ""),
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table"}


def default_power() -> Power:
    """The [power] section as a matrix that leaves it out gets it."""
    return Power(**{k: default for k, (_, default) in _SECTIONS["power"].items()})


class _Errors:
    def __init__(self, path: Path):
        self.path = path
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{self.path}: {where}: {message}")


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _fields(raw: Any, schema: dict, where: str, errors: _Errors) -> dict[str, Any]:
    """Values of a table after checking unknown keys, types and required fields."""
    if not isinstance(raw, dict):
        errors.add(where, f"expected a table, got {type(raw).__name__}")
        raw = {}
    out: dict[str, Any] = {}
    for key in raw.keys() - schema.keys():
        errors.add(where, f"unknown field {key!r} (known: {', '.join(sorted(schema))})")
    for key, (types, default) in schema.items():
        if key not in raw:
            if default is REQUIRED:
                errors.add(where, f"field {key!r} is required")
            out[key] = None if default is REQUIRED else default
            continue
        value = raw[key]
        if not _typed(value, types):
            expected = "a number" if float in types else _TYPE_NAMES[types[0]]
            errors.add(where, f"field {key!r}: expected {expected}, got {value!r}")
            value = None if default is REQUIRED else default
        out[key] = float(value) if float in types and isinstance(value, int) and not isinstance(value, bool) else value
    return out


def _choice(value: Any, allowed: tuple[str, ...] | frozenset[str], where: str, name: str, errors: _Errors) -> None:
    if value is not None and value not in allowed:
        errors.add(where, f"field {name!r}: {value!r} is not one of {', '.join(sorted(allowed))}")


def _positive(values: dict[str, Any], names: tuple[str, ...], where: str, errors: _Errors, allow_zero=()) -> None:
    for name in names:
        v = values[name]
        if v is not None and (v < 0 or (v == 0 and name not in allow_zero)):
            errors.add(where, f"field {name!r}: must be {'>= 0' if name in allow_zero else '> 0'}, got {v}")


def _model(raw: dict, base: Path, errors: _Errors) -> ModelSpec:
    where = "[model]"
    m = _fields(raw, _SECTIONS["model"], where, errors)
    _choice(m["source"], ("synthetic", "checkpoint"), where, "source", errors)
    _choice(m["preset"], tuple(PRESETS), where, "preset", errors)
    if m["sha256"] is not None and not SHA256.fullmatch(m["sha256"]):
        errors.add(where, f"field 'sha256': expected 64 lowercase hex digits, got {m['sha256']!r}")
    path = _path(m["path"], base, where, "path", errors)
    cache = _path(m["cache_dir"], base, where, "cache_dir", errors) or cache_dir()
    if m["source"] == "checkpoint":
        if m["path"] is None:
            errors.add(where, "field 'path' is required when source = \"checkpoint\"")
        elif path is not None and not path.is_file():
            errors.add(where, f"field 'path': file not found: {path}")
        if m["sha256"] is None:
            errors.add(where, "field 'sha256' is required when source = \"checkpoint\" (a checkpoint is pinned)")
    elif m["source"] == "synthetic" and m["path"] is not None:
        errors.add(where, "field 'path' applies to source = \"checkpoint\" only (synthetic weights live in the cache)")
    return ModelSpec(m["source"], m["preset"], m["seed"], path, m["sha256"], cache)


def _path(value: str | None, base: Path, where: str, name: str, errors: _Errors) -> Path | None:
    if value is None:
        return None
    try:
        return expand(value, base)
    except KeyError as e:
        errors.add(where, f"field {name!r}: environment variable {e.args[0]} is not set and has no default")
        return None


def _inputs(raw: dict, errors: _Errors) -> InputsSpec:
    where = "[inputs]"
    v = _fields(raw, _SECTIONS["inputs"], where, errors)
    _positive(v, ("batch",), where, errors)
    pins: dict[int, dict[str, str]] = {}
    for res, pin in v["sha256"].items():
        w = f"[inputs.sha256.{res}]"
        if not str(res).isdigit():
            errors.add(w, f"key {res!r}: expected a resolution in pixels such as \"512\"")
            continue
        if not isinstance(pin, dict) or set(pin) != {"latent", "text_embedding"}:
            errors.add(w, "expected { latent = \"<sha256>\", text_embedding = \"<sha256>\" }")
            continue
        for name, digest in pin.items():
            if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
                errors.add(w, f"field {name!r}: expected 64 lowercase hex digits, got {digest!r}")
        pins[int(res)] = dict(pin)
    return InputsSpec(v["seed"], v["batch"], v["timestep"], pins)


def _cell(raw: Any, index: int, known_envs: set[str], errors: _Errors) -> Cell | None:
    cell_id = raw.get("id") if isinstance(raw, dict) else None
    where = f"cell {cell_id!r}" if isinstance(cell_id, str) else f"cells[{index}]"
    name = raw.get("backend") if isinstance(raw, dict) else None
    spec = BACKENDS.get(name) if isinstance(name, str) else None
    extra = spec.options if spec else {}
    schema = {**_CELL, **{k: ((str, int, float, bool), None) for k in extra}}
    c = _fields(raw, schema, where, errors)
    if c["id"] is not None and not CELL_ID.fullmatch(c["id"]):
        errors.add(where, "field 'id': use letters, digits, '.', '_' and '-' (it names files)")
    if c["backend"] is None:
        return None
    if spec is None:
        errors.add(where, f"field 'backend': unknown backend {c['backend']!r} (known: {', '.join(sorted(BACKENDS))})")
        return None
    b = spec.name
    _choice(c["precision"], spec.precisions, where, "precision", errors)
    if c["resolution"] is not None and (c["resolution"] <= 0 or c["resolution"] % 8):
        errors.add(where, f"field 'resolution': must be a positive multiple of 8, got {c['resolution']}")
    if spec.compute_units:
        if c["compute_unit"] is None:
            errors.add(where, f"field 'compute_unit' is required for {b} cells")
        _choice(c["compute_unit"], spec.compute_units, where, "compute_unit", errors)
        if c["device"] is not None:
            errors.add(where, f"field 'device': {b} cells choose hardware with 'compute_unit'")
    else:
        if c["device"] is None:
            errors.add(where, "field 'device' is required")
        elif not re.fullmatch(spec.devices, c["device"]):
            errors.add(where, f"field 'device': {c['device']!r} is not a {b} device")
        if c["compute_unit"] is not None:
            errors.add(where, f"field 'compute_unit' does not apply to {b} cells")
    attention = c["attention"] or spec.attention[0]
    _choice(attention, spec.attention, where, "attention", errors)
    env = c["env"] or spec.default_env
    if env not in known_envs:
        errors.add(where, f"field 'env': unknown env {env!r} (known: {', '.join(sorted(known_envs))})")
    options = {k: c[k] for k in extra if c[k] is not None}
    for key, value in options.items():
        allowed = extra[key].values
        if value not in allowed or type(value) is not type(allowed[0]):
            errors.add(where, f"field {key!r}: {value!r} is not one of {', '.join(map(repr, allowed))}")
    return Cell(
        id=c["id"], label=c["label"] or c["id"] or "", backend=b, env=env, device=c["device"],
        compute_unit=c["compute_unit"], attention=attention, precision=c["precision"] or "",
        resolution=c["resolution"] or 0, enabled=c["enabled"], notes=c["notes"], options=options,
    )


def load_matrix(path: str | Path, known_envs: set[str]) -> Matrix:
    """Read and validate a matrix; raises UserError listing every problem found."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read matrix file: {e.strerror}") from None
    try:
        raw = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    errors = _Errors(path)
    base = path.resolve().parent
    for key in raw.keys() - {*_SECTIONS, "cells"}:
        errors.add("top level", f"unknown section {key!r} (known: {', '.join(sorted([*_SECTIONS, 'cells']))})")
    model = _model(raw.get("model", {}), base, errors)
    inputs = _inputs(raw.get("inputs", {}), errors)
    t = _fields(raw.get("timing", {}), _SECTIONS["timing"], "[timing]", errors)
    _choice(t["order"], ORDERS, "[timing]", "order", errors)
    _choice(t["cooldown"], ("fixed", "adaptive"), "[timing]", "cooldown", errors)
    _positive(t, ("warmup", "iterations", "runs", "cooldown_s", "run_timeout_s", "min_window_s", "cooldown_min_s",
                  "cooldown_max_s", "cooldown_margin"), "[timing]", errors,
              allow_zero=("warmup", "cooldown_s", "min_window_s", "cooldown_min_s", "cooldown_margin"))
    if None not in (t["cooldown_min_s"], t["cooldown_max_s"]) and t["cooldown_min_s"] > t["cooldown_max_s"]:
        errors.add("[timing]", "field 'cooldown_min_s': larger than cooldown_max_s")
    p = _fields(raw.get("power", {}), _SECTIONS["power"], "[power]", errors)
    _choice(p["meter"], METERS, "[power]", "meter", errors)
    _positive(p, ("interval_ms", "baseline_s", "idle_s"), "[power]", errors, allow_zero=("baseline_s",))
    pre = _fields(raw.get("preflight", {}), _SECTIONS["preflight"], "[preflight]", errors)
    _positive(pre, ("load_margin", "load_settle_max_s"), "[preflight]", errors,
              allow_zero=("load_margin", "load_settle_max_s"))
    e = _fields(raw.get("equivalence", {}), _SECTIONS["equivalence"], "[equivalence]", errors)
    ref = _fields(e["reference"], _REFERENCE, "[equivalence.reference]", errors)
    if ref["backend"] not in BACKENDS:
        errors.add("[equivalence.reference]", f"field 'backend': {ref['backend']!r} cannot compute a reference "
                   f"(known: {', '.join(sorted(BACKENDS))})")
    elif ref["env"] not in known_envs:
        errors.add("[equivalence.reference]", f"field 'env': unknown env {ref['env']!r}")
    _choice(ref["precision"], PRECISIONS, "[equivalence.reference]", "precision", errors)

    raw_cells = raw.get("cells", [])
    if not isinstance(raw_cells, list):
        errors.add("top level", "'cells' must be an array of tables ([[cells]])")
        raw_cells = []
    cells = [c for i, rc in enumerate(raw_cells) if (c := _cell(rc, i, known_envs, errors)) is not None]
    seen: set[str] = set()
    for c in cells:
        if c.id in seen:
            errors.add(f"cell {c.id!r}", "field 'id': duplicate cell id")
        seen.add(c.id)
    rep = _fields(raw.get("report", {}), _SECTIONS["report"], "[report]", errors)
    enabled = [c.id for c in cells if c.enabled]
    if rep["baseline"] is not None and cells and rep["baseline"] not in enabled:
        errors.add("[report]", f"field 'baseline': {rep['baseline']!r} is not an enabled cell (enabled: {', '.join(enabled)})")
    if not any(c.enabled for c in cells) and not errors.lines:
        errors.add("cells", "no enabled cells: nothing to run")
    if errors.lines:
        raise UserError(*errors.lines)
    return Matrix(
        path=path, sha256=hashlib.sha256(data).hexdigest(), model=model, inputs=inputs,
        timing=Timing(**t), power=Power(**p), preflight=Preflight(**pre),
        equivalence=Equivalence(**ref, mse_max=e["mse_max"], cosine_min=e["cosine_min"]),
        report=Report(**rep), cells=cells, raw=raw,
    )
