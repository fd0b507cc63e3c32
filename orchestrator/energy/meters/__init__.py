"""Power meters, one module per source, and the choice of one for a session.

`power.meter = "auto"` takes the first available of powermetrics (macOS), nvml (NVIDIA), rapl
(Linux CPUs) and records why each other was skipped; a named meter that is unavailable is an
error; "none" measures no energy and says so in every record."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.config.matrix import Cell, Power
from orchestrator.energy.meters import nvml, powermetrics, rapl
from orchestrator.energy.meters.base import Availability, Meter
from orchestrator.errors import UserError

ORDER = ("powermetrics", "nvml", "rapl")


def gpu_index(cell: Cell) -> int:
    device = cell.device or ""
    return int(device.split(":")[1]) if device.startswith("cuda:") else 0


@dataclass
class Meters:
    """The session's meter source; NVML gets one meter per GPU index, following each cell."""

    name: str | None
    reason: str  # what was chosen and why, or why no energy is measured
    skipped: dict[str, str] = field(default_factory=dict)
    power: Power | None = None
    _made: dict[int, Meter] = field(default_factory=dict)

    def for_cell(self, cell: Cell) -> Meter | None:
        if self.name is None:
            return None
        key = gpu_index(cell) if self.name == "nvml" else 0
        if key not in self._made:
            self._made[key] = self._make(key)
        return self._made[key]

    def _make(self, index: int) -> Meter:
        if self.name == "powermetrics":
            return powermetrics.PowermetricsMeter(self.power.interval_ms, self.power.powermetrics)
        if self.name == "nvml":
            return nvml.NvmlMeter(index)
        return rapl.RaplMeter()

    def versions(self) -> dict[int, str]:
        return {k: m.version() for k, m in self._made.items()}

    def close(self) -> None:
        for m in self._made.values():
            m.close()


def availability(name: str, power: Power) -> Availability:
    if name == "powermetrics":
        return powermetrics.available(power.powermetrics)
    if name == "nvml":
        return nvml.available()
    return rapl.available()


def choose(power: Power) -> Meters:
    if power.meter == "none":
        return Meters(None, "power.meter = \"none\": energy is not measured")
    if power.meter != "auto":
        a = availability(power.meter, power)
        if not a.ok:
            raise UserError(f"[power] meter = \"{power.meter}\" is not available here: {a.reason}")
        return Meters(power.meter, a.reason, power=power)
    skipped = {}
    for name in ORDER:
        a = availability(name, power)
        if a.ok:
            return Meters(name, f"auto: {a.reason}", skipped, power)
        skipped[name] = a.reason
    why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    return Meters(None, f"no power meter available on this host ({why}); energy is not measured", skipped)
