"""Adaptive cooldown: wait for idle power and a temperature that stopped falling, bounded."""

import pytest

from orchestrator.cooldown import adaptive, cooled, temperature_falling
from orchestrator.meters.base import Interval, MeterRecord, Reading

S = 10**9


def _record(watts: list[float], temps: list[float] | None = None) -> MeterRecord:
    """One interval per 0.5 s with the given powers; temperatures, if any, read every 0.5 s."""
    ivs = [Interval(i * S // 2, (i + 1) * S // 2, {"gpu": w / 2}) for i, w in enumerate(watts)]
    readings = [Reading((i + 1) * S // 2, {"temperature_c": c}) for i, c in enumerate(temps or [])]
    return MeterRecord(ivs, readings)


def test_cooled_needs_power_within_the_margin_of_idle():
    now = 5 * S
    assert cooled(_record([300] * 6 + [105] * 4), now, idle_w=100, margin=0.1)
    assert not cooled(_record([300] * 6 + [115] * 4), now, idle_w=100, margin=0.1)
    assert not cooled(MeterRecord([], []), now, idle_w=100, margin=0.1)


def test_a_falling_temperature_is_not_cooled_yet():
    now = 5 * S
    falling = [70 - 0.5 * i for i in range(10)]  # -1 °C/s
    steady = [55.0 + (0.1 if i % 2 else 0) for i in range(10)]
    assert temperature_falling(_record([], falling), now)
    assert not temperature_falling(_record([], steady), now)
    assert not cooled(_record([100] * 10, falling), now, idle_w=100, margin=0.1)
    assert cooled(_record([100] * 10, steady), now, idle_w=100, margin=0.1)


class FakeMeter:
    """Power decays from 300 W towards 100 W idle, one interval per 0.5 s of fake time."""

    def __init__(self):
        self.t = 0

    def peek(self):
        n = self.t * 2 // S
        return _record([100 + 200 * 0.8**i for i in range(n)])


def _run(meter, **kw):
    def sleep(s):
        meter.t += int(s * S)
    return adaptive(meter, idle_w=100, clock=lambda: meter.t, sleep=sleep, **kw)


def test_adaptive_waits_until_power_settles():
    c = _run(FakeMeter(), min_s=1, max_s=60, margin=0.1)
    # 200 * 0.8**i < 10 from i = 14: settled once the last 2 s of intervals are all below 110 W
    assert c.settled is True and 7 <= c.seconds <= 12


def test_adaptive_respects_min_and_max():
    c = _run(FakeMeter(), min_s=30, max_s=60, margin=0.1)
    assert c.settled is True and c.seconds == pytest.approx(30.0)
    c = _run(FakeMeter(), min_s=1, max_s=3, margin=0.01)
    assert c.settled is False and c.seconds == pytest.approx(3.0, abs=0.5)
