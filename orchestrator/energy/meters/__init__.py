"""Power meters, one module per source, and the choice of one for a session.

`REGISTRY` lists every source's `MeterSpec` (each module's `METER`); a new meter is one module
plus one line there. `power.meter = "auto"` takes the first available of those marked `auto`,
in registry order (powermetrics on macOS, nvml on NVIDIA, rapl on Linux CPUs), and records why
each other was skipped; a named meter that is unavailable is an error; "none" measures no
energy and says so in every record."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config.matrix import Cell, Matrix, Power
from orchestrator.energy.meters import nvml, powermetrics, rapl
from orchestrator.energy.meters.base import Meter, MeterSpec, NoMeter
from orchestrator.errors import UserError

REGISTRY: tuple[MeterSpec, ...] = (
    powermetrics.METER,
    nvml.METER,
    rapl.METER,
)


def gpu_index(cell: Cell) -> int:
    device = cell.device or ""
    return int(device.split(":")[1]) if device.startswith("cuda:") else 0


@dataclass
class Meters:
    """The session's meter source (None: no energy is measured, `reason` says why); a per-GPU
    source gets one meter per GPU index, following each cell, or the one GPU a fleet's GPU slot
    is bound to (`gpu`: its NVML index, which CUDA_VISIBLE_DEVICES does not renumber)."""

    spec: MeterSpec | None
    reason: str  # what was chosen and why, or why no energy is measured
    skipped: dict[str, str] = field(default_factory=dict)
    power: Power | None = None
    gpu: int | None = None
    _made: dict[int, Meter] = field(default_factory=dict)

    def index(self, cell: Cell) -> int:
        return self.gpu if self.gpu is not None else gpu_index(cell)

    @property
    def name(self) -> str | None:
        return self.spec.name if self.spec is not None else None

    def for_cell(self, cell: Cell) -> Meter:
        if self.spec is None or self.power is None:
            return NoMeter(self.reason)
        key = self.index(cell) if self.spec.per_gpu else 0
        if key not in self._made:
            self._made[key] = self.spec.make(self.power, key)
        return self._made[key]

    def throttle_reasons(self, cell: Cell) -> list[str] | None:
        """The slowdowns the source sees on the cell's GPU now; None where it cannot tell."""
        if self.spec is None or self.spec.throttle_reasons is None:
            return None
        return self.spec.throttle_reasons(self.index(cell))

    def versions(self) -> dict[int, str]:
        return {k: m.version() for k, m in self._made.items()}

    def close(self) -> None:
        for m in self._made.values():
            m.close()


def check_name(power: Power, where: str) -> MeterSpec | None:
    """The registry entry `power.meter` names (None for auto and none); a UserError naming the
    known meters otherwise. Called as soon as a matrix is loaded, before anything runs."""
    if power.meter in ("auto", "none"):
        return None
    spec = next((s for s in REGISTRY if s.name == power.meter), None)
    if spec is None:
        known = ", ".join(["auto", "none", *(s.name for s in REGISTRY)])
        raise UserError(f"{where}: [power]: field 'meter': {power.meter!r} is not one of {known}")
    return spec


def check(m: Matrix, where: str) -> None:
    """The meter's name (`check_name`), and that cells with `isolation = "gpu"` have a meter that
    reads each board alone: runs on other GPUs of the node share its host's rails. `auto` is
    checked on each node, against the meter it chooses there."""
    spec = check_name(m.power, where)
    if m.power.meter == "auto" or (spec is not None and spec.per_gpu):
        return
    per_board = ", ".join(s.name for s in REGISTRY if s.per_gpu)
    if lines := [f"{where}: cell {c.id!r}: field 'isolation': \"gpu\" needs a per-board meter ([power] meter = "
                 f"\"auto\" or {per_board}); {m.power.meter!r} cannot tell one GPU's runs from the others'"
                 for c in m.cells if c.isolation == "gpu"]:
        raise UserError(*lines)


def choose(power: Power) -> Meters:
    if power.meter == "none":
        return Meters(None, "power.meter = \"none\": energy is not measured")
    if (spec := check_name(power, "matrix")) is not None:
        a = spec.available(power)
        if not a.ok:
            raise UserError(f"[power] meter = \"{power.meter}\" is not available here: {a.reason}")
        return Meters(spec, a.reason, power=power)
    skipped: dict[str, str] = {}
    for spec in REGISTRY:
        if not spec.auto:
            continue
        a = spec.available(power)
        if a.ok:
            return Meters(spec, f"auto: {a.reason}", skipped, power)
        skipped[spec.name] = a.reason
    why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    return Meters(None, f"no power meter available on this host ({why}); energy is not measured", skipped)
