"""A quiet host before each run: the load average back near the host's idle level.

The idle level is the lowest of the 1, 5 and 15-minute load averages when the session starts:
a host that was busy until a moment ago shows it in the 1-minute figure, one that just became
busy in the 15-minute one, and the lowest is the nearest to what this host does when idle.
Before each run the 1-minute average must come back to within `margin` of it; the wait is
bounded, and a run that starts without it settling is flagged, never dropped."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

POLL_S = 1.0


@dataclass(frozen=True)
class LoadWait:
    limit: float
    before: float
    after: float
    waited_s: float
    settled: bool


def load_average() -> tuple[float, float, float] | None:
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def idle_level() -> float | None:
    loads = load_average()
    return min(loads) if loads else None


def settle(limit: float, max_s: float, read: Callable[[], float] = lambda: os.getloadavg()[0],
           sleep: Callable[[float], None] = time.sleep, poll_s: float = POLL_S,
           clock: Callable[[], float] = time.monotonic) -> LoadWait:
    """Wait until `read()` (the 1-minute load average) is at most `limit`, for at most `max_s`."""
    t0 = clock()
    before = now = read()
    while now > limit and (waited := clock() - t0) < max_s:
        sleep(min(poll_s, max_s - waited))
        now = read()
    return LoadWait(limit, before, now, clock() - t0, now <= limit)
