"""Adaptive cooldown: wait for idle power and a temperature that stopped falling, bounded."""

import pytest

from orchestrator.energy.arithmetic import Interval
from orchestrator.energy.meters.base import MeterRecord, Reading
from orchestrator.run.cooldown import FIRST_INTERVAL_MAX_S, adaptive, cooled, idle_power, temperature_falling

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


def test_power_that_stopped_falling_above_idle_is_a_plateau():
    now = 6 * S
    assert cooled(_record([300] * 4 + [127] * 8), now, idle_w=77, margin=0.1) == "plateau"
    assert cooled(_record([300] * 4 + [104] * 8), now, idle_w=100, margin=0.1) == "idle"
    still_falling = [200 - 5 * i for i in range(12)]  # -10 W/s: 2 s windows 20 W apart, > 2 %
    assert cooled(_record(still_falling), now, idle_w=77, margin=0.1) is None
    assert cooled(_record([127] * 3), 1.5 * S, idle_w=77, margin=0.1) is None  # no 4 s of history yet


class FakeMeter:
    """Power decays from `floor` + 200 W towards `floor`, one interval per 0.5 s of fake time."""

    def __init__(self, floor: float = 100):
        self.t = 0
        self.floor = floor

    def peek(self):
        n = self.t * 2 // S
        return _record([self.floor + 200 * 0.8**i for i in range(n)])


def _run(meter, idle_w=100, **kw):
    """On a simulated clock: sleeping advances the fake meter's time, so the cooldown's seconds
    are the rule's own, whatever the host's speed."""
    def sleep(s):
        meter.t += int(s * S)
    return adaptive(meter, idle_w=idle_w, clock=lambda: meter.t, sleep=sleep, **kw)


def test_adaptive_waits_until_power_settles():
    c = _run(FakeMeter(), min_s=1, max_s=60, margin=0.1)
    # 200 * 0.8**i < 10 from i = 14: settled once the last 2 s of intervals are all below 110 W
    assert c.settled is True and c.settled_by == "idle" and 7 <= c.seconds <= 12


def test_adaptive_settles_where_a_loaded_worker_keeps_the_device_above_idle():
    # the H100 case: 77 W with no process, 127 W under an idle CUDA context
    c = _run(FakeMeter(floor=127), idle_w=77, min_s=1, max_s=90, margin=0.1)
    # the 2 s medians differ by under 2 % once 200 * 0.8**i has decayed to a few watts (i ~ 20)
    assert c.settled is True and c.settled_by == "plateau" and 8 <= c.seconds <= 14


def test_adaptive_respects_min_and_max():
    c = _run(FakeMeter(), min_s=30, max_s=60, margin=0.1)
    assert c.settled is True and c.seconds == pytest.approx(30.0)
    c = _run(FakeMeter(), min_s=1, max_s=3, margin=0.01)
    assert c.settled is False and c.seconds == pytest.approx(3.0, abs=0.5)


class SlowStartMeter:
    """A meter whose first interval comes `delay_s` after its start (a meter process slow to
    start on a busy host), then one 100 W interval per 0.5 s of fake time."""

    def __init__(self, delay_s: float):
        self.t, self.delay_s, self.started = 0.0, delay_s, False

    def start(self):
        self.started = True

    def peek(self):
        n = max(0, int((self.t - self.delay_s) * 2))
        return MeterRecord([Interval(int(self.delay_s * S) + i * S // 2, int(self.delay_s * S) + (i + 1) * S // 2,
                                     {"cpu": 50.0}) for i in range(n)], [])

    def stop(self):
        return self.peek()

    def sleep(self, s):
        self.t += s


@pytest.mark.parametrize("delay_s", [0.0, 3.0, 8.0])
def test_idle_power_counts_its_seconds_from_the_meters_first_interval(delay_s):
    m = SlowStartMeter(delay_s)
    assert idle_power(m, 1.0, clock=lambda: m.t, sleep=m.sleep) == pytest.approx(100.0)
    assert m.t == pytest.approx(delay_s + 0.5 + 1.0, abs=0.1)  # the first interval ends 0.5 s after the delay


def test_idle_power_of_a_meter_that_never_gives_an_interval_is_none_after_a_bounded_wait():
    m = SlowStartMeter(delay_s=1e9)
    assert idle_power(m, 1.0, clock=lambda: m.t, sleep=m.sleep) is None
    assert m.t == pytest.approx(FIRST_INTERVAL_MAX_S + 1.0, abs=0.1)
