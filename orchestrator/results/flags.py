"""The run flags, listed once: what each means, how serious it is, and whether the report warns
about it. The summary (`<field>` lists of flagged runs per cell), the console's line per run,
the report's flags column and the stability warnings all read this table, so they agree.

Here rather than in report/ because the summary, one layer down, computes the flagged runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.results.records import RunRecord

SEVERITIES = {
    "wrong": "the output is wrong: its numbers describe a computation that did not match the reference",
    "doubt": "the numbers were measured but may be off; read them with the flag in mind",
    "missing": "a number was not recorded; nothing recorded is wrong",
}


@dataclass(frozen=True)
class Flag:
    name: str
    field: str  # the per-cell summary field that lists the flagged runs
    meaning: str  # one line, for docs/results-format.md
    column: str  # the report's words for it in the flags column, before the runs
    label: str  # the console's word for it, after a run's line
    severity: str  # a key of SEVERITIES
    warns: bool  # a stability warning names the cell's flagged runs
    warning: str  # that warning after "<cell>: ", with {runs}; empty for outliers, warned of with each run's value
    of_run: Callable[[RunRecord], bool] | None  # None: flagged from the cell's statistics, not one run's record
    own_column: bool = False  # the report shows it in a column of its own, not among the flags


def _thermal_limited(r: RunRecord) -> bool:
    return bool((r.thermal_before_run or {}).get("limited") or r.gpu_throttle_before_run)


FLAGS: tuple[Flag, ...] = (
    Flag("outlier", "outlier_runs", "the run's median latency is more than 3 scaled MADs from the cell's median",
         "outlier runs", "outlier", "doubt", True, "", None),
    Flag("energy_outlier", "energy_outlier_runs", "the run's energy per step is more than 3 scaled MADs from the "
         "cell's median", "energy outlier runs", "energy outlier", "doubt", True, "", None),
    Flag("throttled", "throttled_runs", "the meter saw throttling during the run (powermetrics: thermal pressure not "
         "Nominal; NVML: thermal or power-brake clocks)", "throttled", "throttled", "doubt", True,
         "throttled run(s) {runs}", lambda r: bool(r.throttled)),
    Flag("short_window", "short_window_runs", "the timed window spanned fewer than 10 meter updates",
         "window < 10 meter updates", "short window", "doubt", True,
         "run(s) {runs} timed fewer than 10 meter updates", lambda r: bool(r.short_window)),
    Flag("forced_power", "forced_power_runs", "power preconditions failed (battery, Low Power Mode) and "
         "`--force-power` recorded the energy anyway", "energy recorded under failing power preconditions "
         "(--force-power)", "forced power", "doubt", True, "run(s) {runs} measured with power preconditions forced",
         lambda r: bool(r.forced_power)),
    Flag("energy_withheld", "energy_withheld_runs", "power preconditions failed, so the run recorded no energy",
         "energy withheld: power preconditions failed", "energy withheld", "missing", True,
         "run(s) {runs} recorded no energy: power preconditions failed",
         lambda r: bool(r.power_problems) and not r.forced_power),
    Flag("energy_invalid", "energy_invalid_runs", "the meter's values could not be energy (not finite, negative, a "
         "sample of no duration, a power no channel draws), so the run recorded no energy; `energy_invalid` says "
         "which value", "energy invalid: impossible meter values", "energy invalid", "missing", True,
         "run(s) {runs} recorded no energy: the meter's values were impossible", lambda r: bool(r.energy_invalid)),
    Flag("load_unsettled", "load_unsettled_runs", "the run started without the host's load average settling",
         "load average never settled before the run", "load unsettled", "doubt", True,
         "run(s) {runs} started before the load average settled", lambda r: bool(r.load_unsettled)),
    Flag("thermal_limited", "thermal_limited_runs", "macOS reported a thermal warning, or NVML a GPU slowdown, "
         "before the run", "thermal warning or GPU slowdown before the run", "thermal", "doubt", True,
         "run(s) {runs} began under a thermal warning or GPU slowdown", _thermal_limited),
    Flag("numerically_divergent", "divergent_runs", "the output diverged from the reference (not finite, MSE above "
         "`mse_max` or cosine below `cosine_min`); the report shows it in the divergence column", "divergent",
         "DIVERGENT", "wrong", False, "", lambda r: bool(r.numerically_divergent), own_column=True),
)

RUN_FLAGS = tuple(f for f in FLAGS if f.of_run is not None)


def flagged(runs: list[RunRecord], flag: Flag) -> list[int]:
    """Run indexes of the runs that carry `flag` (a flag of one run's record)."""
    assert flag.of_run is not None
    return [r.run_index for r in runs if flag.of_run(r)]


def run_labels(r: RunRecord) -> list[str]:
    """The console's words for the flags one run carries, in table order."""
    return [f.label for f in RUN_FLAGS if f.of_run is not None and f.of_run(r)]
