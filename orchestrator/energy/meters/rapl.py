"""Linux RAPL through powercap sysfs (`/sys/class/powercap/intel-rapl:*`; AMD's RAPL appears
under the same interface): package and dram domains, cumulative `energy_uj` counters polled and
differenced, with wrap-around at `max_energy_range_uj`. The sysfs root is injectable for tests."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from orchestrator.energy.arithmetic import Interval
from orchestrator.energy.meters.base import Availability, Meter, MeterRecord, MeterSpec
from orchestrator.energy.meters.polling import Poller

SYSFS = Path("/sys/class/powercap")
POLL_S = 0.01


@dataclass(frozen=True)
class Domain:
    channel: str  # "package-0", "dram-0"
    energy_file: Path
    max_range_uj: int


def domains(root: Path = SYSFS) -> list[Domain]:
    """Package zones and their dram subzones. Core and uncore are parts of the package, so
    they are left out: the total must not count the same joules twice."""
    out = []
    for zone in sorted(root.glob("intel-rapl:*")):
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        package = zone.name.split(":")[1]
        if name.startswith("package-"):
            channel = name
        elif name == "dram":
            channel = f"dram-{package}"
        else:
            continue
        max_range = int((zone / "max_energy_range_uj").read_text())
        out.append(Domain(channel, zone / "energy_uj", max_range))
    return out


def available(root: Path = SYSFS) -> Availability:
    if not root.is_dir():
        return Availability(False, f"{root} does not exist (not Linux, or no powercap)")
    found = domains(root)
    if not found:
        return Availability(False, f"no RAPL package domain under {root}")
    try:
        for d in found:
            int(d.energy_file.read_text())
    except PermissionError:
        return Availability(False, f"{found[0].energy_file} is readable by root only (run under sudo)")
    except (OSError, ValueError) as e:
        return Availability(False, f"cannot read RAPL counters: {e}")
    return Availability(True, ", ".join(d.channel for d in found))


def differences(samples: list[tuple[int, list[int]]], doms: list[Domain]) -> list[Interval]:
    """Intervals between consecutive polls; a counter that went down wrapped at its range."""
    out = []
    for (t0, v0), (t1, v1) in zip(samples, samples[1:]):
        joules = {}
        for d, a, b in zip(doms, v0, v1):
            delta = b - a
            if delta < 0:
                delta += d.max_range_uj
            joules[d.channel] = delta / 1e6
        out.append(Interval(t0, t1, joules))
    return out


class RaplMeter(Meter):
    name = "rapl"

    def __init__(self, root: Path = SYSFS, poll_s: float = POLL_S):
        self._domains = domains(root)
        self._poll_s = poll_s
        self._poller = Poller(self._read, poll_s)

    def _read(self) -> list[int]:
        return [int(d.energy_file.read_text()) for d in self._domains]

    def version(self) -> str:
        return f"powercap RAPL on Linux {platform.release()} ({', '.join(d.channel for d in self._domains)})"

    def update_interval_s(self) -> float:
        return self._poll_s  # the counters move every ~1 ms; our polls are the resolution

    def start(self) -> None:
        self._poller.start()

    def _record(self, samples: list[tuple[int, list[int]]]) -> MeterRecord:
        return MeterRecord(intervals=differences(samples, self._domains), stats={"polls": len(samples)})

    def peek(self) -> MeterRecord:
        return self._record(list(self._poller.samples))

    def stop(self) -> MeterRecord:
        return self._record(self._poller.stop())


METER = MeterSpec("rapl", available=lambda power: available(), make=lambda power, index: RaplMeter())
