"""Matrix files: a declarative study (model, inputs, timing, power, cells) read from TOML.

Each field is declared once, in the section dataclasses below: type, default and rules, which
the loader checks (orchestrator/config/fields.py) and `orchestrate schema` exports. Cells are
checked against the backend registry (workers/contract/backends.py), so a new backend needs no
edit here. Every problem found is reported at once, each as one line naming the file, the
section or cell id, and the field, so a user fixes a matrix in one pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.fields import Problems, broken_rules, read, setting
from orchestrator.config.paths import cache_dir
from orchestrator.errors import UserError
from workers.contract.backends import BACKENDS, PRECISIONS
from workers.contract.presets import PRESETS

ORDERS = ("interleaved", "sequential")
ISOLATIONS = ("node", "gpu")
CELL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # ASCII only; it names files and folders
SEED_MAX = 2**32 - 1  # what numpy's legacy seeding and the recorded order seed accept
DAY_S = 86400.0
HOUR_S = 3600.0
RESOLUTION_MAX = 2048
RESOLUTION_KEY = re.compile(r"[0-9]{1,5}")  # ASCII digits: str.isdigit() also takes '²⁵⁶'
SHA256 = re.compile(r"[0-9a-f]{64}")
HEX = (SHA256, "expected 64 lowercase hex digits")


def backend_names() -> list[str]:
    """The registry's backends, read when a matrix is (so a registered backend needs no edit here)."""
    return sorted(BACKENDS)


@dataclass(frozen=True)
class ModelSpec:
    source: str = setting(doc="where the UNet weights come from", choices=("synthetic", "checkpoint"))
    preset: str = setting("sd15", doc="UNet architecture (workers/contract/presets.py)", choices=tuple(PRESETS))
    seed: int = setting(0, doc="seed of the synthetic weights", ge=0, le=SEED_MAX)
    path: Path | None = setting(None, doc="the checkpoint file (source = \"checkpoint\" only)")
    sha256: str | None = setting(None, doc="digest of the weights file; required for a checkpoint", pattern=HEX)
    cache_dir: Path = setting(factory=cache_dir, doc="synthetic weights, cached reference outputs, conversions and compiler caches "
                              "(default: $CDB_CACHE_DIR or ~/.cache/coreml-diffusion-benchmarks)")

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"


_PINS_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "patternProperties": {"^[0-9]+$": {
        "type": "object", "additionalProperties": False, "required": ["latent", "text_embedding"],
        "properties": {k: {"type": "string", "pattern": f"^{SHA256.pattern}$"} for k in ("latent", "text_embedding")},
    }},
}


@dataclass(frozen=True)
class InputsSpec:
    seed: int = setting(0, doc="seed of the latent and the text embedding", ge=0, le=SEED_MAX)
    batch: int = setting(2, doc="batch size (2: classifier-free guidance)", gt=0, le=64)
    timestep: int = setting(500, doc="the diffusion timestep every step is given", ge=0, le=999)
    sha256: dict[int, dict[str, str]] = setting(
        factory=dict, doc="per resolution, the digests the inputs must have: \"512\" = { latent, text_embedding }",
        file_type=dict[str, Any], schema=_PINS_SCHEMA)


@dataclass(frozen=True)
class Timing:
    warmup: int = setting(1, doc="untimed steps before the timed loop", ge=0, le=1000)
    iterations: int = setting(10, doc="timed steps per run", gt=0, le=100_000)
    runs: int = setting(7, doc="fresh-process runs per cell", gt=0, le=1000)
    cooldown: str = setting("fixed", doc="between runs: a fixed wait, or until power is back near idle",
                            choices=("fixed", "adaptive"))
    cooldown_s: float = setting(30.0, doc="the fixed cooldown", ge=0, le=HOUR_S)
    cooldown_min_s: float = setting(5.0, doc="adaptive cooldown: the shortest wait", ge=0, le=HOUR_S)
    cooldown_max_s: float = setting(120.0, doc="adaptive cooldown: the longest wait", gt=0, le=HOUR_S)
    cooldown_margin: float = setting(0.1, doc="adaptive cooldown: idle power plus this fraction counts as idle",
                                    ge=0, le=10)
    order: str = setting("interleaved", doc="run order of the cells' runs", choices=ORDERS)
    order_seed: int | None = setting(None, doc="seed of the interleaved order (default: drawn and recorded)",
                                     ge=0, le=SEED_MAX)
    run_timeout_s: float = setting(900.0, doc="a run taking longer is stopped and failed", gt=0, le=DAY_S)
    worker_start: str = setting("auto", doc="each run's fresh worker: spawned (a new interpreter that imports its "
                                "toolchain), forked from the env's fork server (imports paid once per session), "
                                "or auto: the fork server on Linux, spawn on macOS",
                                choices=("auto", "forkserver", "spawn"))
    min_window_s: float | None = setting(None, doc="shortest timed window (default: 80 update intervals of "
                                         "the session's meter)", ge=0, le=HOUR_S)


@dataclass(frozen=True)
class Power:
    # Checked against the meter registry (orchestrator/energy/meters, a layer above this one) by
    # `meters.check` right after the matrix loads, so a new meter needs no edit here.
    meter: str = setting("auto", doc="the energy meter: auto, none, or a name in the meter registry",
                         pattern=(re.compile(r"[a-z][a-z0-9_-]*"), "a meter's name: lowercase letters, digits, '_', '-'"))
    interval_ms: int = setting(100, doc="meter sampling interval", ge=1, le=60_000)
    baseline_s: float = setting(2.0, doc="idle power measured this long before each run", ge=0, le=HOUR_S)
    powermetrics: str | None = setting(None, doc="the powermetrics executable; CDB_POWERMETRICS overrides it")
    idle_s: float = setting(10.0, doc="the host's idle power is measured this long once per session "
                            "(adaptive cooldown)", gt=0, le=HOUR_S)


@dataclass(frozen=True)
class Preflight:
    load_margin: float = setting(0.5, doc="a run may start once the 1-minute load average is within this of idle",
                                 ge=0, le=1000)
    load_settle_max_s: float = setting(60.0, doc="how long to wait for that before each run (0: don't wait)", ge=0,
                                       le=HOUR_S)
    pmset: str | None = setting(None, doc="the pmset executable (macOS power and thermal state)")


@dataclass(frozen=True)
class Equivalence:
    backend: str = setting("diffusers", doc="backend of the fp32 reference output", choices=backend_names,
                           table="reference")
    env: str = setting("diffusers", doc="env that computes the reference", table="reference")
    device: str = setting("cpu", doc="device of the reference", table="reference")
    precision: str = setting("fp32", doc="precision of the reference", choices=PRECISIONS, table="reference")
    mse_max: float = setting(1e-3, doc="a cell's output may differ from the reference by this mean squared error",
                           ge=0, le=1e6)
    cosine_min: float = setting(0.999, doc="a cell's output must have at least this cosine similarity with the reference",
                              ge=-1, le=1)

    def reference_cell(self, resolution: int) -> Cell:
        return Cell(
            id=f"reference-{resolution}", label="fp32 reference", backend=self.backend, env=self.env,
            device=self.device, compute_unit=None, attention=BACKENDS[self.backend].attention[0],
            precision=self.precision, resolution=resolution, enabled=True, notes="", options={},
        )


@dataclass(frozen=True)
class Report:
    baseline: str | None = setting(None, doc="cell id every other cell is compared with in reports")
    groups: dict[str, list[str]] = setting(factory=dict, doc="named sets of cell ids (`gpu = [...]`); reports state "
                                           "each cell of a group against each other group as the range of their "
                                           "ratios of medians")


@dataclass(frozen=True)
class Fleet:
    retries: int = setting(1, doc="a fleet session (`--ray`): a run whose node dies or leaves the cluster is tried "
                           "again on another node up to this many times", ge=0, le=100)
    replicate: str = setting("spread", doc="a fleet session: `spread` gives each run to whichever matching node is "
                             "free; `each-host` runs every cell's full run set on every node that matches it",
                             choices=("spread", "each-host"))


HOST_LABEL = (re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}"), "a label name: a letter, then letters, digits, '_', '.', '-'")


@dataclass(frozen=True, kw_only=True)
class Cell:
    id: str = setting(doc="names the cell in files and tables",
                      pattern=(CELL_ID, "use 1 to 64 ASCII letters, digits, '.', '_' and '-', starting with a "
                                       "letter or digit (it names files)"))
    label: str = setting("", doc="the name tables show (default: the id)")
    backend: str = setting(doc="the backend that runs it", choices=backend_names)
    env: str = setting("", doc="envs/<name> that runs it (default: the backend's default env)")
    device: str | None = setting(None, doc="device, for backends that choose one (cpu, mps, cuda, gpu)")
    compute_unit: str | None = setting(None, doc="Core ML compute units, for backends that choose them")
    attention: str = setting("", doc="attention implementation (default: the backend's first)")
    precision: str = setting(doc="weights and activations")
    resolution: int = setting(512, doc="image size in pixels", gt=0, le=RESOLUTION_MAX, multiple_of=8)
    enabled: bool = setting(True, doc="false: kept in the file, not run")
    notes: str = setting("", doc="free text carried into reports")
    hosts: dict[str, str] = setting(factory=dict, doc="a fleet session (`--ray`): the nodes that run the cell, by "
                                    "label: `{ chip = \"Apple M2*\" }` matches a node whose fact or Ray label `chip` "
                                    "matches the pattern (fnmatch); empty: every node. A local session ignores it")
    isolation: str = setting("node", doc="a fleet session (`--ray`): what one run has to itself. `node`: the whole "
                             "node, no other run beside it; `gpu`: one NVIDIA GPU of its node (device = \"cuda\"), "
                             "so runs of such cells share a multi-GPU node, one per GPU, each metered on its own "
                             "board. A local session runs one run at a time either way",
                             choices=ISOLATIONS)
    options: dict[str, Any] = setting(factory=dict, extra=True, doc="the backend's own keys, beside the others")

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
    model: ModelSpec = setting(doc="the UNet and its weights")
    inputs: InputsSpec = setting(doc="the pinned latent, text embedding and timestep")
    timing: Timing = setting(doc="warmup, iterations, runs, cooldown and order")
    power: Power = setting(doc="the energy meter")
    preflight: Preflight = setting(doc="host checks before each run")
    equivalence: Equivalence = setting(doc="each cell's output against an fp32 reference")
    report: Report = setting(doc="how reports compare cells")
    fleet: Fleet = setting(doc="a session fanned out over a Ray cluster (`--ray`)")
    cells: list[Cell] = setting(doc="one table per configuration measured ([[cells]])")
    raw: dict[str, Any] = setting(doc="the file as parsed, recorded in session.json")

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


def sections() -> dict[str, type]:
    """The matrix file's [sections]: Matrix's fields whose type is a section dataclass."""
    hints = typing.get_type_hints(Matrix)
    return {f.name: hints[f.name] for f in dataclasses.fields(Matrix) if dataclasses.is_dataclass(hints[f.name])}


def default_power() -> Power:
    """The [power] section as a matrix that leaves it out gets it."""
    return Power()


def _check_groups(report: Report, ids: list[str], problems: Problems) -> None:
    """Groups name cells of the matrix, none twice, and no group is named like a cell (so
    `orchestrate compare DIR:NAME` means one thing)."""
    seen: dict[str, str] = {}
    for name, members in report.groups.items():
        where = f"[report.groups] {name!r}"
        if name in ids:
            problems.add(where, "a group cannot be named like a cell")
        if not members:
            problems.add(where, "names no cell")
        for cell in members:
            if cell not in ids:
                problems.add(where, f"{cell!r} is not a cell of the matrix (cells: {', '.join(ids)})")
            elif cell in seen:
                problems.add(where, f"{cell!r} is already in group {seen[cell]!r}")
            seen.setdefault(cell, name)


def read_report(content: Any, where: str) -> Report:
    """The [report] section of a matrix as parsed TOML (session.json keeps it), checked; UserError
    names what is wrong."""
    problems = Problems(where)
    section = content.get("report", {}) if isinstance(content, dict) else {}
    report = Report(**read(Report, section, "[report]", problems))
    if problems.lines:
        raise UserError(*problems.lines)
    return report


def _model(raw: Any, base: Path, problems: Problems) -> ModelSpec:
    where = "[model]"
    m = read(ModelSpec, raw, where, problems, base)
    given = raw if isinstance(raw, dict) else {}
    if m["source"] == "checkpoint":
        if "path" not in given:
            problems.add(where, "field 'path' is required when source = \"checkpoint\"")
        elif m["path"] is not None and not m["path"].is_file():
            named = re.findall(r"\$\{(\w+)", str(given["path"]))
            problems.add(where, f"field 'path': file not found: {m['path']}"
                         + (f" (set {named[0]} to the checkpoint's path)" if named else ""))
        if m["sha256"] is None:
            problems.add(where, "field 'sha256' is required when source = \"checkpoint\" (a checkpoint is pinned)")
    elif m["source"] == "synthetic" and "path" in given:
        problems.add(where, "field 'path' applies to source = \"checkpoint\" only (synthetic weights live in the cache)")
    return ModelSpec(**{**m, "cache_dir": m["cache_dir"] or cache_dir()})


def _inputs(raw: Any, problems: Problems) -> InputsSpec:
    v = read(InputsSpec, raw, "[inputs]", problems)
    pins: dict[int, dict[str, str]] = {}
    for res, pin in v["sha256"].items():
        w = f"[inputs.sha256.{res}]"
        if not RESOLUTION_KEY.fullmatch(res) or int(res) > RESOLUTION_MAX:
            problems.add(w, f"key {res!r}: expected a resolution in pixels such as \"512\" (at most {RESOLUTION_MAX})")
            continue
        if not isinstance(pin, dict) or set(pin) != {"latent", "text_embedding"}:
            problems.add(w, "expected { latent = \"<sha256>\", text_embedding = \"<sha256>\" }")
            continue
        for name, digest in pin.items():
            if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
                problems.add(w, f"field {name!r}: {HEX[1]}, got {digest!r}")
        pins[int(res)] = dict(pin)
    return InputsSpec(**{**v, "sha256": pins})


def _timing(raw: Any, problems: Problems) -> Timing:
    t = read(Timing, raw, "[timing]", problems)
    if t["cooldown_min_s"] > t["cooldown_max_s"]:
        problems.add("[timing]", "field 'cooldown_min_s': larger than cooldown_max_s")
    return Timing(**t)


def _equivalence(raw: Any, known_envs: set[str], problems: Problems) -> Equivalence:
    e = read(Equivalence, raw, "[equivalence]", problems)
    if e["backend"] in BACKENDS and e["env"] not in known_envs:
        problems.add("[equivalence.reference]", f"field 'env': unknown env {e['env']!r}")
    return Equivalence(**e)


def _cell(raw: Any, index: int, known_envs: set[str], problems: Problems) -> Cell | None:
    """A cell checked against its backend's registry entry (devices, compute units, precisions,
    attention, options)."""
    cell_id = raw.get("id") if isinstance(raw, dict) else None
    where = f"cell {cell_id!r}" if isinstance(cell_id, str) else f"cells[{index}]"
    name = raw.get("backend") if isinstance(raw, dict) else None
    spec = BACKENDS.get(name) if isinstance(name, str) else None
    extra = spec.options if spec else {}
    c = read(Cell, raw, where, problems, extra=extra)
    if spec is None:
        return None
    b = spec.name
    if c["precision"] is not None and c["precision"] not in spec.precisions:
        problems.add(where, f"field 'precision': {c['precision']!r} is not one of {', '.join(sorted(spec.precisions))}")
    if spec.compute_units:
        if c["compute_unit"] is None:
            problems.add(where, f"field 'compute_unit' is required for {b} cells")
        elif c["compute_unit"] not in spec.compute_units:
            problems.add(where, f"field 'compute_unit': {c['compute_unit']!r} is not one of "
                         f"{', '.join(sorted(spec.compute_units))}")
        if c["device"] is not None:
            problems.add(where, f"field 'device': {b} cells choose hardware with 'compute_unit'")
    else:
        if c["device"] is None:
            problems.add(where, "field 'device' is required")
        elif not re.fullmatch(spec.devices, c["device"]):
            problems.add(where, f"field 'device': {c['device']!r} is not a {b} device")
        if c["compute_unit"] is not None:
            problems.add(where, f"field 'compute_unit' does not apply to {b} cells")
    attention = c["attention"] or spec.attention[0]
    if attention not in spec.attention:
        problems.add(where, f"field 'attention': {attention!r} is not one of {', '.join(sorted(spec.attention))}")
    env = c["env"] or spec.default_env
    if env not in known_envs:
        problems.add(where, f"field 'env': unknown env {env!r} (known: {', '.join(sorted(known_envs))})")
    for label, pattern in c["hosts"].items():
        if not HOST_LABEL[0].fullmatch(label):
            problems.add(where, f"field 'hosts': {HOST_LABEL[1]}, got {label!r}")
        if not pattern:
            problems.add(where, f"field 'hosts': label {label!r} has an empty pattern")
    if c["isolation"] == "gpu" and c["device"] != "cuda":
        problems.add(where, f"field 'isolation': \"gpu\" needs device = \"cuda\" (a run gets one GPU of its node, "
                     f"which it sees as cuda:0), got device {c['device']!r}")
    options = {k: raw[k] for k in extra if k in raw}
    for key, value in options.items():
        allowed = extra[key].values
        if value not in allowed or type(value) is not type(allowed[0]):
            problems.add(where, f"field {key!r}: {value!r} is not one of {', '.join(map(repr, allowed))}")
    return Cell(**{**c, "id": c["id"] or "", "label": c["label"] or c["id"] or "", "env": env,
                   "attention": attention, "precision": c["precision"] or "", "options": options})


def with_runs(matrix: Matrix, runs: int) -> Matrix:
    """The matrix with `timing.runs` overridden (`--runs`), held to the field's own range."""
    rule = next(f for f in dataclasses.fields(Timing) if f.name == "runs")
    if problems := broken_rules(rule, runs):
        raise UserError(f"--runs: {problems[0]}")
    return dataclasses.replace(matrix, timing=dataclasses.replace(matrix.timing, runs=runs))


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
    problems = Problems(path)
    known = sections()
    for key in sorted(raw.keys() - {*known, "cells"}):
        problems.add("top level", f"unknown section {key!r} (known: {', '.join(sorted([*known, 'cells']))})")
    model = _model(raw.get("model", {}), path.resolve().parent, problems)
    inputs = _inputs(raw.get("inputs", {}), problems)
    timing = _timing(raw.get("timing", {}), problems)
    power = Power(**read(Power, raw.get("power", {}), "[power]", problems))
    preflight = Preflight(**read(Preflight, raw.get("preflight", {}), "[preflight]", problems))
    equivalence = _equivalence(raw.get("equivalence", {}), known_envs, problems)
    raw_cells = raw.get("cells", [])
    if not isinstance(raw_cells, list):
        problems.add("top level", "'cells' must be an array of tables ([[cells]])")
        raw_cells = []
    cells = [c for i, rc in enumerate(raw_cells) if (c := _cell(rc, i, known_envs, problems)) is not None]
    seen: dict[str, str] = {}
    for c in cells:
        # Ids name folders: on a case-insensitive file system (macOS) `A` and `a` would share one.
        if not c.id:  # its id is already named as wrong
            continue
        if (key := c.id.lower()) in seen:
            same = "duplicate cell id" if seen[key] == c.id else f"same as {seen[key]!r} but for case (ids name folders)"
            problems.add(f"cell {c.id!r}", f"field 'id': {same}")
        seen.setdefault(key, c.id)
    report = Report(**read(Report, raw.get("report", {}), "[report]", problems))
    fleet = Fleet(**read(Fleet, raw.get("fleet", {}), "[fleet]", problems))
    enabled = [c.id for c in cells if c.enabled]
    if report.baseline is not None and cells and report.baseline not in enabled:
        problems.add("[report]", f"field 'baseline': {report.baseline!r} is not an enabled cell "
                     f"(enabled: {', '.join(enabled)})")
    _check_groups(report, [c.id for c in cells], problems)
    if not enabled and not problems.lines:
        problems.add("cells", "no enabled cells: nothing to run")
    if problems.lines:
        raise UserError(*problems.lines)
    return Matrix(path=path, sha256=hashlib.sha256(data).hexdigest(), model=model, inputs=inputs, timing=timing,
                  power=power, preflight=preflight, equivalence=equivalence, report=report, fleet=fleet, cells=cells,
                  raw=raw)
