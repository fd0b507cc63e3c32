"""The interface every power source implements (one file per source beside this one).

A meter runs in the background from `start()` to `stop()` and yields intervals
`(start_ns, end_ns, {channel: joules})` on the `time.monotonic_ns()` axis, which workers also
stamp their windows with, plus time-stamped extra readings (temperature, clocks, thermal
pressure, throttle reasons). `NoMeter` stands in where no energy is measured, and says why.

A source registers itself with one `MeterSpec` (its module's `METER`) listed in the registry,
meters/__init__.py."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config.matrix import Power
from orchestrator.energy.arithmetic import Interval


@dataclass(frozen=True)
class Reading:
    t_ns: int
    values: dict[str, Any]


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str  # why not, or what was found


@dataclass
class MeterRecord:
    """What a run keeps of its meter: the raw data, for samples/."""

    intervals: list[Interval] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)  # parser counters, measured update interval
    exit_status: str | None = None  # a meter process: "stopped", or how it ended on its own before that
    stderr_tail: str | None = None  # a meter process: the end of its stderr


class Meter(ABC):
    name: str = ""
    measures: bool = True  # False only for NoMeter

    @abstractmethod
    def version(self) -> str:
        """For provenance."""

    @abstractmethod
    def update_interval_s(self) -> float:
        """How often the source's numbers change: a timed window must span many of these."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> MeterRecord:
        """Stop measuring; everything measured since start()."""

    @abstractmethod
    def peek(self) -> MeterRecord:
        """Everything measured since start(), while measuring goes on (adaptive cooldown)."""

    def throttled(self, record: MeterRecord, start_ns: int, end_ns: int) -> bool | None:
        """Whether the source saw throttling in [start_ns, end_ns]; None when it cannot tell."""
        return None

    def close(self) -> None:  # noqa: B027  (a meter with nothing to release needs no override)
        """Release the source for good (end of session)."""


class NoMeter(Meter):
    """No energy source for this run: records nothing; `reason` says why energy is not measured."""

    name = "none"
    measures = False

    def __init__(self, reason: str):
        self.reason = reason

    def version(self) -> str:
        return "none"

    def update_interval_s(self) -> float:
        return 0.0

    def start(self) -> None:
        pass

    def stop(self) -> MeterRecord:
        return MeterRecord()

    def peek(self) -> MeterRecord:
        return MeterRecord()


@dataclass(frozen=True)
class MeterSpec:
    """A power source's registry entry: what `power.meter` calls it, whether this host has it,
    how to make one, and what the session must know about it."""

    name: str
    available: Callable[[Power], Availability]
    make: Callable[[Power, int], Meter]  # (power settings, GPU index: 0 unless per_gpu)
    per_gpu: bool = False  # one meter per GPU index, following each cell's device
    auto: bool = True  # `power.meter = "auto"` considers it, in registry order
    throttle_reasons: Callable[[int], list[str] | None] | None = None  # slowdowns active on a GPU now
    sees_host: bool = True  # its reading includes the host's CPU, so host work must stay out of its idle window
