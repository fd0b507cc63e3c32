"""The host's state before a run, each probe reporting facts and, for power, the problems that
make an energy figure untrustworthy (battery power, Low Power Mode)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from orchestrator.energy.preflight import pmset

PMSET_ENV = "CDB_PMSET"


@dataclass(frozen=True)
class PowerState:
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def pmset_executable(configured: str | None) -> str | None:
    """`[preflight] pmset`, else $CDB_PMSET, else the system's `pmset` on macOS (None elsewhere)."""
    return configured or os.environ.get(PMSET_ENV) or ("pmset" if sys.platform == "darwin" else None)


def power_state(pmset_exe: str | None) -> PowerState:
    return _macos_power(pmset_exe) if pmset_exe else _psutil_power()


def _macos_power(exe: str) -> PowerState:
    try:
        src = pmset.parse_batt(pmset.run(exe, "-g", "batt"))
        low = pmset.low_power_mode(pmset.parse_settings(pmset.run(exe, "-g")), src.source)
    except (OSError, subprocess.SubprocessError) as e:
        return PowerState([f"could not read the power state with {exe} ({e})"], {"pmset": exe})
    facts = {"pmset": exe, "source": src.source, "battery_percent": src.battery_percent,
             "battery_state": src.battery_state, "low_power_mode": low}
    problems = []
    if src.source is None:
        problems.append(f"`{exe} -g batt` named no power source")
    elif not src.on_ac:
        charge = f", battery {src.battery_percent}%" if src.battery_percent is not None else ""
        problems.append(f"drawing from {src.source}{charge}, not AC power")
    if low:
        problems.append(f"Low Power Mode is on for {src.source or 'the active source'}")
    return PowerState(problems, facts)


def _psutil_power() -> PowerState:
    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    if battery is None:
        return PowerState([], {"battery": None})
    facts = {"battery_percent": round(battery.percent, 1), "on_ac_power": battery.power_plugged}
    if battery.power_plugged is False:
        return PowerState([f"running on battery ({battery.percent:.0f}%), not plugged in"], facts)
    return PowerState([], facts)


def thermal_state(pmset_exe: str | None) -> dict[str, Any] | None:
    """macOS's thermal warnings and CPU limits (`pmset -g therm`); None where there is no pmset."""
    if not pmset_exe:
        return None
    try:
        t = pmset.parse_therm(pmset.run(pmset_exe, "-g", "therm"))
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": str(e), "limited": None}
    return {**asdict(t), "limited": t.limited}
