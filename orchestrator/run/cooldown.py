"""Cooldown between a worker's warmup and its measured windows.

`fixed`: wait `cooldown_s`. `adaptive`: wait until the meter's total power is back within
`cooldown_margin` of the host's idle power (measured once per session, before any worker
starts), or has stopped falling, and the temperature, where the meter reads one, has stopped
falling too; never less than `cooldown_min_s`, never more than `cooldown_max_s`, and say
whether and how it settled.

"Stopped falling" is needed because a loaded worker holds its device awake: an H100 idled at
77 W with no process on it and at 127 W under a worker's idle CUDA context, so a cooldown that
waited for 77 W always ran to its maximum."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from orchestrator.energy.arithmetic import TOTAL, invalid_reason, median_power
from orchestrator.energy.meters.base import Meter, MeterRecord

RECENT_S = 2.0  # power is judged over the last this many seconds
PLATEAU_FALL = 0.02  # less than this fall from the 2 s before to the last 2 s: power stopped falling
TEMPERATURE_S = 5.0  # the temperature trend over the last this many seconds
FALLING_C_PER_S = -0.05
POLL_S = 0.5
FIRST_INTERVAL_MAX_S = 10.0  # the idle window waits this long at most for the meter's first interval


@dataclass(frozen=True)
class Cooldown:
    seconds: float
    settled: bool | None  # None: fixed cooldown, nothing to settle
    settled_by: str | None = None  # "idle": back near idle power; "plateau": power stopped falling


def idle_power(meter: Meter, seconds: float, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> float | None:
    """The host's idle power: median total interval power over `seconds` with no worker (None
    when the meter gave nothing, or values that cannot be energy). The `seconds` count from the
    meter's first interval, waited for up to FIRST_INTERVAL_MAX_S: a meter process that starts
    slowly on a busy host (powermetrics, its replay) gave no interval at all in a 1 s idle window,
    and the session's adaptive cooldowns then fell back to fixed ones."""
    meter.start()
    deadline = clock() + FIRST_INTERVAL_MAX_S
    while not meter.peek().intervals and clock() < deadline:
        sleep(POLL_S / 10)
    sleep(seconds)
    rec = meter.stop()
    if not rec.intervals or invalid_reason(rec.intervals) is not None:
        return None
    return median_power(rec.intervals, rec.intervals[0].start_ns, rec.intervals[-1].end_ns).get(TOTAL)


def temperature_falling(rec: MeterRecord, now_ns: int) -> bool:
    pts = [(r.t_ns / 1e9, r.values["temperature_c"]) for r in rec.readings
           if "temperature_c" in r.values and r.t_ns >= now_ns - TEMPERATURE_S * 1e9]
    if len(pts) < 3:
        return False
    t, c = np.array(pts).T
    return float(np.polyfit(t - t[0], c, 1)[0]) < FALLING_C_PER_S


def _power(rec: MeterRecord, start_ns: float, end_ns: float) -> float | None:
    ivs = [iv for iv in rec.intervals if start_ns <= iv.end_ns and iv.start_ns < end_ns]
    return median_power(ivs, ivs[0].start_ns, ivs[-1].end_ns).get(TOTAL) if ivs else None


def cooled(rec: MeterRecord, now_ns: int, idle_w: float, margin: float) -> str | None:
    """How the host has cooled by `now_ns` ("idle" or "plateau"), or None if it has not."""
    recent = _power(rec, now_ns - RECENT_S * 1e9, now_ns)
    if recent is None or temperature_falling(rec, now_ns):
        return None
    if recent <= idle_w * (1 + margin):
        return "idle"
    before = _power(rec, now_ns - 2 * RECENT_S * 1e9, now_ns - RECENT_S * 1e9)
    if before is not None and rec.intervals[0].start_ns <= now_ns - 2 * RECENT_S * 1e9 and recent >= before * (1 - PLATEAU_FALL):
        return "plateau"
    return None


def adaptive(meter: Meter, idle_w: float, min_s: float, max_s: float, margin: float,
             clock: Callable[[], int] = time.monotonic_ns, sleep: Callable[[float], None] = time.sleep) -> Cooldown:
    t0 = clock()
    while True:
        waited = (clock() - t0) / 1e9
        if waited >= min_s and (how := cooled(meter.peek(), clock(), idle_w, margin)):
            return Cooldown(waited, True, how)
        if waited >= max_s:
            return Cooldown(waited, False)
        sleep(POLL_S)
