"""Stability warnings: the cells whose numbers a reader should not take at face value, each said
in one line (printed by `orchestrate report` and listed in the reports)."""

from __future__ import annotations

from typing import Any

MIN_OK_RUNS = 3
MAX_SPREAD = {"latency": 0.05, "energy": 0.10}  # p10-p90 width as a fraction of the median


def _spread(c: dict[str, Any], median: str, prefix: str) -> float | None:
    med, p10, p90 = c.get(median), c.get(f"{prefix}_p10"), c.get(f"{prefix}_p90")
    if None in (med, p10, p90) or med <= 0:
        return None
    return (p90 - p10) / med


def _runs(indexes: list[int]) -> str:
    return ", ".join(map(str, indexes))


def cell_warnings(c: dict[str, Any]) -> list[str]:
    if c["status"] == "unsupported":
        return []
    cid, out = c["cell_id"], []
    if c["n_ok"] < MIN_OK_RUNS:
        out.append(f"{cid}: only {c['n_ok']} ok run(s); spread and outliers need at least {MIN_OK_RUNS}")
    for kind, median, prefix in (("latency", "latency_ms_median", "latency_ms"),
                                 ("energy", "energy_per_step_j", "energy_per_step_j")):
        spread = _spread(c, median, prefix)
        if spread is not None and spread > MAX_SPREAD[kind]:
            out.append(f"{cid}: {kind} p10-p90 spread is {spread:.1%} of the median (above {MAX_SPREAD[kind]:.0%})")
    for kind, field, unit in (("latency", "outlier_runs", "ms"), ("energy", "energy_outlier_runs", "J")):
        for o in c.get(field) or []:
            out.append(f"{cid}: run {o['run_index']} is an outlier in {kind} ({o['value']:.4g} {unit}, more than 3 scaled MADs from the median)")
    if c.get("throttled_runs"):
        out.append(f"{cid}: throttled run(s) {_runs(c['throttled_runs'])}")
    if c.get("forced_power_runs"):
        out.append(f"{cid}: run(s) {_runs(c['forced_power_runs'])} measured with power preconditions forced")
    if c.get("short_window_runs"):
        out.append(f"{cid}: run(s) {_runs(c['short_window_runs'])} timed fewer than 10 meter updates")
    return out


def warnings(summary: dict[str, Any]) -> list[str]:
    return [w for c in summary["cells"] for w in cell_warnings(c)]
