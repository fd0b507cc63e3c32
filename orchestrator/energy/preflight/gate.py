"""Preflight around a session: checked once before any run (failing power preconditions stop
the session unless forced) and again before each run, whose record carries what was found.

Energy measured on battery or in Low Power Mode is not the number users pay for, so such runs
record no energy unless `--force-power`, and then carry `forced_power`. Flag, don't hide: the
run itself is always kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from orchestrator.config.matrix import Cell, Preflight
from orchestrator.energy.meters import Meters
from orchestrator.energy.preflight import checks, load
from orchestrator.errors import UserError


class PreflightGate:
    def __init__(self, config: Preflight, force_power: bool, status: Callable[[str], Any]):
        self.config = config
        self.force_power = force_power
        self.status = status  # a context manager factory showing what we wait for
        self.pmset = checks.pmset_executable(config.pmset)
        self.idle_load = load.idle_level()  # taken first, before env syncing or references load the host

    def session_start(self, records_power: bool) -> dict[str, Any]:
        """The power preconditions; raises `UserError` when power would be recorded under
        failing preconditions without `--force-power`."""
        power = checks.power_state(self.pmset)
        if power.problems and records_power and not self.force_power:
            raise UserError("preflight: energy would not be trustworthy on this host now: "
                            + "; ".join(power.problems)
                            + ". Fix that (plug in, turn Low Power Mode off), or pass --force-power "
                              "to record energy anyway with every affected run flagged.")
        return {"idle_load": self.idle_load, "load_margin": self.config.load_margin,
                "load_settle_max_s": self.config.load_settle_max_s, "force_power": self.force_power,
                "power": {**power.facts, "problems": power.problems}, "pmset": self.pmset}

    def before_run(self, cell: Cell, meters: Meters) -> dict[str, Any]:
        """Wait for a quiet host, then take the run's preconditions; the fields go into its record."""
        out: dict[str, Any] = {"host_load_avg": list(load.load_average() or []) or None,
                               "load_wait": None, "load_unsettled": None}
        if self.idle_load is not None and self.config.load_settle_max_s > 0:
            limit = self.idle_load + self.config.load_margin
            with self.status(f"waiting for the load average to settle to <= {limit:.2f} "
                             f"(at most {self.config.load_settle_max_s:g} s)"):
                wait = load.settle(limit, self.config.load_settle_max_s)
            out.update(load_wait=asdict(wait), load_unsettled=not wait.settled)
        power = checks.power_state(self.pmset)
        thermal = checks.thermal_state(self.pmset)
        out.update(
            power_state=power.facts, power_problems=power.problems,
            forced_power=bool(power.problems) and self.force_power,
            thermal_before_run=thermal,
            gpu_throttle_before_run=meters.throttle_reasons(cell),
        )
        return out

    def withhold_energy(self, pre: dict[str, Any]) -> str | None:
        """Why this run records no energy, if its power preconditions failed and were not forced."""
        if pre["power_problems"] and not self.force_power:
            return "power preconditions failed before the run: " + "; ".join(pre["power_problems"])
        return None
