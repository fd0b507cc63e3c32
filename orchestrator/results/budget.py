"""Where a session's time went: per cell and in all, each run's wall time split into the parts its
record times (load, cooldown, baseline, warmup, timed window) and the rest (process start and
exit, the protocol, the harness). Users pay for the methodology in wall time, so every report
says how much of it measured something and how far it is from the irreducible part (cooldown,
baseline, warmup and timed window: what the method needs even with an instant load)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestrator.results.records import RunRecord, SessionRecord
from workers.contract.typed import field

PARTS = ("load_s", "cooldown_s", "baseline_s", "warmup_s", "window_s")


@dataclass(frozen=True)
class TimeBudget:
    """One row of summary.json `time_budget[]`: the session (`scope` "all runs") or one cell."""

    scope: str = field(doc="`all runs`, or a cell's id")
    runs: int = field(unit="count", doc="runs with a recorded wall time (any status)")
    wall_s: float = field(unit="s", doc="their wall time, worker start to exit, summed")
    load_s: float = field(unit="s", doc="model load, imports and compilation included, summed")
    cooldown_s: float = field(unit="s", doc="cooldowns, summed")
    baseline_s: float = field(unit="s", doc="idle baseline windows, summed")
    warmup_s: float = field(unit="s", doc="warmup iterations, summed")
    window_s: float = field(unit="s", doc="timed windows, summed")
    other_s: float = field(unit="s", doc="the rest of the wall time: process start and exit, protocol, harness")
    measured_share: float | None = field(None, unit="fraction", doc="`window_s` / `wall_s`")
    wall_over_irreducible: float | None = field(None, unit="ratio", doc="`wall_s` / (cooldown + baseline + warmup "
                                                                        "+ window)")
    session_wall_s: float | None = field(None, unit="s", doc="`all runs` only: session start to finish (null when "
                                                             "it was resumed or the times are missing); it "
                                                             "starts after the envs are synced and the model and "
                                                             "inputs pinned, so what it exceeds `wall_s` by went "
                                                             "to the idle-power window, the fork servers' "
                                                             "imports (as far as the session waited for them), the "
                                                             "references and the waits between runs")


def time_budget(scope: str, runs: list[RunRecord], session_wall_s: float | None = None) -> TimeBudget:
    timed = [r for r in runs if r.wall_s is not None]
    sums = {p: sum(getattr(r, "baseline_window_s" if p == "baseline_s" else p) or 0.0 for r in timed) for p in PARTS}
    wall = sum(r.wall_s or 0.0 for r in timed)
    irreducible = sums["cooldown_s"] + sums["baseline_s"] + sums["warmup_s"] + sums["window_s"]
    return TimeBudget(scope=scope, runs=len(timed), wall_s=wall, **sums,
                      other_s=max(wall - sum(sums.values()), 0.0),
                      measured_share=sums["window_s"] / wall if wall > 0 else None,
                      wall_over_irreducible=wall / irreducible if irreducible > 0 else None,
                      session_wall_s=session_wall_s)


def time_budgets(session: SessionRecord | None, cells: list[str], runs: list[RunRecord]) -> list[TimeBudget]:
    """All runs first, then each cell in `cells`' order; empty when no run has a wall time."""
    if not any(r.wall_s is not None for r in runs):
        return []
    by_cell = [time_budget(c, [r for r in runs if r.cell_id == c]) for c in cells]
    return [time_budget("all runs", runs, _session_wall(session)), *(b for b in by_cell if b.runs)]


def _session_wall(session: SessionRecord | None) -> float | None:
    if session is None or session.resumes or session.merged_from or not session.started_at or not session.finished_at:
        return None
    try:
        seconds = (datetime.fromisoformat(session.finished_at) - datetime.fromisoformat(session.started_at)).total_seconds()
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None
