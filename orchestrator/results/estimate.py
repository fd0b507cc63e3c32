"""A study's duration estimated from a previous session before it starts: each cell's planned
runs times that cell's mean run wall time in the previous session (its time budget), summed.
Cells that session did not run, or ran as another definition, fall back to the matrix's bounds.
What a study will cost is what users weigh against the methodology."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from orchestrator.config.matrix import Matrix
from orchestrator.config.plan import run_bounds, span
from orchestrator.errors import UserError
from orchestrator.results.budget import time_budget
from orchestrator.results.store import SessionDir

OUTSIDE_RUNS = "idle-power window, the fork servers' imports, the references and the waits between runs"
IGNORED = ("label", "notes", "enabled")  # what a cell's definition may change without changing its runs


def estimate_lines(matrix: Matrix, planned: dict[str, int], folder: Path) -> list[str]:
    """The estimate as lines of text; UserError in one line when `folder` cannot be one."""
    sdir = SessionDir(folder)
    if not folder.is_dir():
        raise UserError(f"--from {folder}: no such folder")
    if not sdir.has_session():
        raise UserError(f"--from {folder}: no session.json; not a session folder to estimate from")
    session = sdir.read_session()
    runs = sdir.read_runs()
    known = {c["id"]: c for c in session.cells if isinstance(c, dict)}
    mean_s: dict[str, float] = {}
    differ: list[str] = []
    for cell in matrix.enabled_cells:
        if cell.id not in known:
            continue
        if not _same(asdict(cell), known[cell.id]):
            differ.append(cell.id)
            continue
        budget = time_budget(cell.id, [r for r in runs.records if r.cell_id == cell.id])
        if budget.runs:
            mean_s[cell.id] = budget.wall_s / budget.runs
    if not mean_s:
        why = f"cells {', '.join(differ)} are defined differently there" if differ else (
            f"it ran {', '.join(known) or 'no cell'}")
        raise UserError(f"--from {folder}: no run of this matrix's cells with a wall time in session "
                        f"{session.session_id or sdir.id} ({why}); nothing to estimate from")
    same = "the same matrix" if session.matrix.get("sha256") == matrix.sha256 else "another matrix"
    skipped = f"; {len(runs.problems)} damaged line(s) of runs.jsonl skipped" if runs.problems else ""
    lines = [f"estimate from session {session.session_id or sdir.id} ({folder}, {same}{skipped}): "
             "runs planned x that cell's mean run wall time there"]
    width = max(len(c) for c in planned)
    low, high = run_bounds(matrix)
    total = 0.0
    unknown = 0
    for cell_id, n in planned.items():
        if cell_id in mean_s:
            total += n * mean_s[cell_id]
            lines.append(f"  {cell_id:{width}}  {n} x {mean_s[cell_id]:.1f} s = {span(n * mean_s[cell_id])}")
        else:
            unknown += n
            why = "defined differently there" if cell_id in differ else "not in that session"
            lines.append(f"  {cell_id:{width}}  {n} x {span(low)} to {span(high)} ({why}: the matrix's bounds)")
    if unknown:
        lines.append(f"  total: {span(total + unknown * low)} to {span(total + unknown * high)}, plus the "
                     f"{OUTSIDE_RUNS}")
    else:
        lines.append(f"  total: {span(total)}, plus the {OUTSIDE_RUNS}")
    return lines


def latest_estimate(matrix: Matrix, planned: dict[str, int], results: Path) -> list[str]:
    """The estimate from the newest session of the same matrix (same sha256) under `results`
    that has one; no lines when there is none. Folders that cannot be read are passed over."""
    if not results.is_dir():
        return []
    for folder in sorted((d for d in results.iterdir() if d.is_dir()), key=lambda d: d.name, reverse=True):
        try:
            if SessionDir(folder).read_session().matrix.get("sha256") == matrix.sha256:
                return estimate_lines(matrix, planned, folder)
        except UserError:
            continue
    return []


def _same(cell: dict, before: dict) -> bool:
    """The same definition: every setting both records hold agrees (an older record may lack
    settings added since; their defaults ran)."""
    return all(cell[k] == before[k] for k in cell.keys() & before.keys() if k not in IGNORED)
