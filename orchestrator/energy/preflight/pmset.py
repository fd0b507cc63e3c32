"""macOS `pmset`: which power source the Mac draws from, whether Low Power Mode is on for it,
and its thermal warnings. The parsers take the command's text, so they are tested on real
captured output (tests/fixtures/pmset/) on any host."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

TIMEOUT_S = 10
_SOURCE = re.compile(r"Now drawing from '([^']+)'")
_BATTERY = re.compile(r"^\s*-\S+.*?\s(\d{1,3})%;\s*([^;]+);", re.M)
_NOTHING_RECORDED = re.compile(r"^Note: No .* has been recorded\.?$")
_SECTION = re.compile(r"^(\S.*):\s*$")  # "Currently in use:", "AC Power:", "Battery Power:"


@dataclass(frozen=True)
class PowerSource:
    """`pmset -g batt`: the source drawn from, and the internal battery where there is one."""

    source: str | None  # "AC Power", "Battery Power", "UPS Power"
    battery_percent: int | None = None
    battery_state: str | None = None  # charging, discharging, charged, finishing charge, AC attached

    @property
    def on_ac(self) -> bool | None:
        return None if self.source is None else self.source == "AC Power"


@dataclass(frozen=True)
class Thermal:
    """`pmset -g therm`. A quiet Mac prints only "Note: No ... has been recorded" lines; any
    other line is a recorded warning level or CPU limit, kept verbatim and flagged rather than
    interpreted, since its exact format varies between macOS versions."""

    reported: list[str] = field(default_factory=list)

    @property
    def limited(self) -> bool:
        return bool(self.reported)


def parse_batt(text: str) -> PowerSource:
    m = _SOURCE.search(text)
    b = _BATTERY.search(text)
    return PowerSource(m.group(1) if m else None, int(b.group(1)) if b else None, b.group(2).strip() if b else None)


def parse_settings(text: str) -> dict[str, dict[str, str]]:
    """`pmset -g` ("Currently in use:") or `pmset -g custom` (one section per power source):
    section -> setting -> value, the value as printed (e.g. "1 (sleep prevented by ...)")."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if m := _SECTION.match(line):
            current = sections.setdefault(m.group(1), {})
        elif current is not None and line[:1] in (" ", "\t") and line.strip():
            key, value = _split_setting(line)
            current[key] = value
    return sections


def _split_setting(line: str) -> tuple[str, str]:
    """Names may contain single spaces ("Sleep On Power Button 1"); the value is the last
    whitespace-separated field unless it is followed by a parenthesised note."""
    body = line.strip()
    m = re.match(r"^(.*?)\s+(-?\d+(?:\s+\(.*\))?|\S+)$", body)
    return (m.group(1), m.group(2)) if m else (body, "")


def low_power_mode(settings: dict[str, dict[str, str]], source: str | None) -> bool | None:
    """Whether Low Power Mode applies now: the "Currently in use" section where `pmset -g`
    printed one, else the section of the active source. Macs with High Power Mode print
    `powermode` (0 automatic, 1 low, 2 high) instead of `lowpowermode` (0/1)."""
    section = settings.get("Currently in use") or (settings.get(source) if source else None)
    if section is None:
        return None
    for key in ("lowpowermode", "powermode"):
        if key in section:
            return section[key].split()[0] == "1"
    return None


def parse_therm(text: str) -> Thermal:
    return Thermal([line.strip() for line in text.splitlines()
                    if line.strip() and not _NOTHING_RECORDED.match(line.strip())])


def run(exe: str, *args: str) -> str:
    """The command's standard output; OSError or CalledProcessError when it cannot tell."""
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=True).stdout
