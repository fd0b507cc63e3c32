"""Preflight: pmset parsers on real captured output, the load-average wait, battery on Linux,
and what a session does when power preconditions fail."""

from __future__ import annotations

import contextlib
import itertools
from collections import namedtuple

import pytest
from conftest import PMSET_CAPTURES as PMSET

from orchestrator.config.matrix import Cell, Preflight
from orchestrator.energy.meters import Meters
from orchestrator.energy.preflight import checks, load, pmset
from orchestrator.energy.preflight.gate import PreflightGate
from orchestrator.errors import UserError

Battery = namedtuple("sbattery", "percent secsleft power_plugged")  # psutil's own field names


def test_load_wait_ends_as_soon_as_the_load_settles():
    readings = iter([3.0, 2.5, 1.9, 1.2, 0.9, 0.8])
    slept = []
    wait = load.settle(limit=1.0, max_s=60, read=lambda: next(readings), sleep=slept.append, poll_s=1.0)
    assert wait.settled and (wait.before, wait.after) == (3.0, 0.9)
    assert slept == [1.0] * 4  # polled until the reading came under the limit, no longer


def test_load_wait_is_bounded_and_says_it_never_settled():
    t = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        t[0] += s

    wait = load.settle(limit=0.5, max_s=0.3, read=lambda: 4.0, poll_s=0.05, sleep=sleep, clock=lambda: t[0])
    assert not wait.settled and wait.after == 4.0
    assert wait.waited_s == pytest.approx(0.3) and sum(slept) == pytest.approx(0.3)  # to its bound, not beyond


def test_load_wait_does_not_wait_on_a_quiet_host():
    wait = load.settle(limit=1.0, max_s=60, read=itertools.repeat(0.2).__next__, sleep=pytest.fail,
                       clock=lambda: 5.0)
    assert wait.settled and wait.waited_s == 0.0


def test_linux_battery_through_psutil(monkeypatch):
    monkeypatch.setattr(checks.psutil, "sensors_battery", lambda: Battery(41.5, 3600, False))
    state = checks.power_state(None)
    assert state.problems == ["running on battery (42%), not plugged in"]
    assert state.facts == {"battery_percent": 41.5, "on_ac_power": False}
    monkeypatch.setattr(checks.psutil, "sensors_battery", lambda: Battery(100.0, -2, True))
    assert checks.power_state(None).problems == []
    monkeypatch.setattr(checks.psutil, "sensors_battery", lambda: None)  # a desktop or a server
    assert checks.power_state(None) == checks.PowerState([], {"battery": None})


# -- pmset, on real captured output (tests/fixtures/pmset/SOURCES.md) ---------------------------

def _capture(name: str) -> str:
    return (PMSET / name).read_text()


@pytest.mark.parametrize("name, source, percent, state", [
    ("batt-ac-charged-intel-mbp.txt", "AC Power", 100, "charged"),
    ("batt-ac-charging-36pct.txt", "AC Power", 36, "charging"),
    ("batt-battery-discharging-m1-air.txt", "Battery Power", 100, "discharging"),
])
def test_pmset_batt(name, source, percent, state):
    got = pmset.parse_batt(_capture(name))
    assert (got.source, got.battery_percent, got.battery_state) == (source, percent, state)
    assert got.on_ac is (source == "AC Power")


def test_pmset_settings_currently_in_use():
    settings = pmset.parse_settings(_capture("g-currently-in-use-lowpowermode0-m3.txt"))
    now = settings["Currently in use"]
    assert now["lowpowermode"] == "0" and now["Sleep On Power Button"] == "1"
    assert now["sleep"].startswith("1 (sleep prevented by") and now["hibernatefile"] == "/var/vm/sleepimage"
    assert len(now) == 13
    assert pmset.low_power_mode(settings, "AC Power") is False


def test_pmset_powermode_2_is_high_power_not_low():
    settings = pmset.parse_settings(_capture("g-currently-in-use-powermode2-sleepdisabled1.txt"))
    assert settings["Currently in use"]["powermode"] == "2"
    assert settings["System-wide power settings"] == {"SleepDisabled": "1"}
    assert pmset.low_power_mode(settings, "AC Power") is False


def test_pmset_custom_low_power_follows_the_active_source():
    settings = pmset.parse_settings(_capture("g-custom-powermode-battery1-ac2.txt"))
    assert set(settings) == {"Battery Power", "AC Power"}
    assert pmset.low_power_mode(settings, "Battery Power") is True  # powermode 1 on battery
    assert pmset.low_power_mode(settings, "AC Power") is False  # powermode 2 (high) on AC
    assert pmset.low_power_mode(settings, None) is None


def test_pmset_therm_of_a_quiet_mac_reports_nothing():
    t = pmset.parse_therm(_capture("therm-no-warning-apple-silicon.txt"))
    assert t.reported == [] and t.limited is False


def test_macos_power_state_through_the_pmset_command(fake_pmset, tmp_path):
    exe = fake_pmset("batt-battery-discharging-m1-air.txt", "g-custom-powermode-battery1-ac2.txt")
    state = checks.power_state(exe)
    assert state.problems == ["drawing from Battery Power, battery 100%, not AC power",
                              "Low Power Mode is on for Battery Power"]
    assert state.facts["low_power_mode"] is True and state.facts["battery_state"] == "discharging"
    exe = fake_pmset("batt-ac-charged-intel-mbp.txt", "g-currently-in-use-lowpowermode0-m3.txt")
    assert checks.power_state(exe).problems == []
    assert checks.thermal_state(exe) == {"reported": [], "limited": False}
    assert "could not read the power state" in checks.power_state(str(tmp_path / "missing")).problems[0]


def _gate(pmset_exe: str, force: bool) -> PreflightGate:
    config = Preflight(load_margin=0.5, load_settle_max_s=0, pmset=pmset_exe)
    return PreflightGate(config, force, status=lambda message: contextlib.nullcontext())


def test_failing_power_stops_a_metered_session_unless_forced(fake_pmset):
    exe = fake_pmset("batt-battery-discharging-m1-air.txt", "g-currently-in-use-lowpowermode0-m3.txt")
    with pytest.raises(UserError, match="Battery Power.*--force-power"):
        _gate(exe, force=False).session_start(records_power=True)
    assert _gate(exe, force=False).session_start(records_power=False)["power"]["problems"]  # nothing to refuse
    forced = _gate(exe, force=True)
    assert forced.session_start(records_power=True)["force_power"] is True
    cell = Cell(id="c", label=None, backend="diffusers", env="diffusers", device="cpu", compute_unit=None,
                attention=None, precision="fp32", resolution=64, enabled=True, notes="", options={})
    run = forced.before_run(cell, Meters(None, "none"))
    assert run["forced_power"] is True and run["power_problems"] and forced.withhold_energy(run) is None
    unforced = _gate(exe, force=False).before_run(cell, Meters(None, "none"))
    assert unforced["forced_power"] is False
    assert "power preconditions failed before the run" in _gate(exe, force=False).withhold_energy(unforced)
