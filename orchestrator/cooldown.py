"""Cooldown between a worker's warmup and its measured windows.

`fixed`: wait `cooldown_s`. `adaptive`: wait until the meter's total power is back within
`cooldown_margin` of the host's idle power (measured once per session, before any worker
starts) and the temperature, where the meter reads one, has stopped falling; never less than
`cooldown_min_s`, never more than `cooldown_max_s`, and say whether it settled."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from orchestrator.energy import TOTAL, median_power
from orchestrator.meters.base import Meter, MeterRecord

RECENT_S = 2.0  # power is judged over the last this many seconds
TEMPERATURE_S = 5.0  # the temperature trend over the last this many seconds
FALLING_C_PER_S = -0.05
POLL_S = 0.5


@dataclass(frozen=True)
class Cooldown:
    seconds: float
    settled: bool | None  # None: fixed cooldown, nothing to settle


def idle_power(meter: Meter, seconds: float) -> float | None:
    """The host's idle power: median total interval power over `seconds` with no worker."""
    meter.start()
    time.sleep(seconds)
    rec = meter.stop()
    if not rec.intervals:
        return None
    return median_power(rec.intervals, rec.intervals[0].start_ns, rec.intervals[-1].end_ns).get(TOTAL)


def temperature_falling(rec: MeterRecord, now_ns: int) -> bool:
    pts = [(r.t_ns / 1e9, r.values["temperature_c"]) for r in rec.readings
           if "temperature_c" in r.values and r.t_ns >= now_ns - TEMPERATURE_S * 1e9]
    if len(pts) < 3:
        return False
    t, c = np.array(pts).T
    return float(np.polyfit(t - t[0], c, 1)[0]) < FALLING_C_PER_S


def cooled(rec: MeterRecord, now_ns: int, idle_w: float, margin: float) -> bool:
    recent = [iv for iv in rec.intervals if iv.end_ns >= now_ns - RECENT_S * 1e9]
    if not recent:
        return False
    power = median_power(recent, recent[0].start_ns, recent[-1].end_ns).get(TOTAL)
    return power is not None and power <= idle_w * (1 + margin) and not temperature_falling(rec, now_ns)


def adaptive(meter: Meter, idle_w: float, min_s: float, max_s: float, margin: float,
             clock: Callable[[], int] = time.monotonic_ns, sleep: Callable[[float], None] = time.sleep) -> Cooldown:
    t0 = clock()
    while True:
        waited = (clock() - t0) / 1e9
        if waited >= min_s and cooled(meter.peek(), clock(), idle_w, margin):
            return Cooldown(waited, True)
        if waited >= max_s:
            return Cooldown(waited, False)
        sleep(POLL_S)
