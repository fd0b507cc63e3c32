"""Stability warnings: the cells whose numbers a reader should not take at face value, each said
in one line (printed by `orchestrate report` and listed in the reports). Which run flags warn,
and in what words, is the flags table's to say (results/flags.py)."""

from __future__ import annotations

from orchestrator.results.flags import FLAGS
from orchestrator.results.summary import CellSummary, RunValue, Summary

MIN_OK_RUNS = 3
MAX_SPREAD = {"latency": 0.05, "energy": 0.10}  # p10-p90 width as a fraction of the median
OUTLIER_UNITS = {"outlier": ("latency", "ms"), "energy_outlier": ("energy", "J")}
OUTLIER_MEDIANS = {"outlier": "latency_ms_median", "energy_outlier": "energy_per_step_j"}


def deviation(c: CellSummary, flag: str, value: float) -> str:
    """How far an outlier run lies from its cell's median, relatively ("+6.0% from the median"):
    the MAD rule flags a run 6% off two tight ones as surely as one 600% off, and a reader
    judges which matters."""
    median = getattr(c, OUTLIER_MEDIANS[flag])
    if median is None or median == 0:
        return "the median is 0"
    return f"{(value - median) / abs(median):+.1%} from the median"


def _spread(median: float | None, p10: float | None, p90: float | None) -> float | None:
    if median is None or p10 is None or p90 is None or median <= 0:
        return None
    return (p90 - p10) / median


def cell_warnings(c: CellSummary) -> list[str]:
    if c.status == "unsupported":
        return []
    cid, out = c.cell_id, []
    if c.n_ok < MIN_OK_RUNS:
        out.append(f"{cid}: only {c.n_ok} ok run(s); spread and outliers need at least {MIN_OK_RUNS}")
    for kind, spread in (("latency", _spread(c.latency_ms_median, c.latency_ms_p10, c.latency_ms_p90)),
                         ("energy", _spread(c.energy_per_step_j, c.energy_per_step_j_p10, c.energy_per_step_j_p90))):
        if spread is not None and spread > MAX_SPREAD[kind]:
            out.append(f"{cid}: {kind} p10-p90 spread is {spread:.1%} of the median (above {MAX_SPREAD[kind]:.0%})")
    for flag in FLAGS:
        runs = getattr(c, flag.field)
        if not (flag.warns and runs):
            continue
        if flag.name in OUTLIER_UNITS:
            kind, unit = OUTLIER_UNITS[flag.name]
            out += [f"{cid}: run {o.run_index} is an outlier in {kind} ({o.value:.4g} {unit}, "
                    f"{deviation(c, flag.name, o.value)}; more than 3 scaled MADs from it)"
                    for o in runs if isinstance(o, RunValue)]
        else:
            out.append(f"{cid}: " + flag.warning.format(runs=", ".join(map(str, runs))))
    return out


def warnings(summary: Summary) -> list[str]:
    return [w for c in summary.cells for w in cell_warnings(c)]
