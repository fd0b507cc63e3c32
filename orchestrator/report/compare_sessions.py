"""`orchestrate compare A B`: two cells of one session, or the same cell in two sessions (a
driver update, a new OS). Sessions are compared only when they ran the same weights on the same
inputs; otherwise a difference could be the model's, not the backend's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.results.compare import Comparison, compare_runs
from orchestrator.results.groups import GroupRatio, group_ratios, medians_of, recorded_groups
from orchestrator.results.hosts import hosts_of, run_host
from orchestrator.results.records import RunRecord, SessionRecord, current_cell_id
from orchestrator.results.store import SessionDir
from orchestrator.results.summary import build_summary


@dataclass(frozen=True)
class Side:
    sdir: SessionDir
    cell: str | None
    session: SessionRecord | None  # None: session.json is missing
    runs: list[RunRecord]
    problems: list[str]
    host: str | None = None  # DIR:CELL@HOST: only that host's runs (a fleet session)

    def label(self, cell: str) -> str:
        return f"{cell}@{self.host}" if self.host else cell


def parse_side(arg: str) -> Side:
    """`DIR`, `DIR:CELL` or `DIR:CELL@HOST`."""
    path, cell, host = Path(arg), None, None
    if not path.is_dir() and ":" in arg:
        head, cell = arg.rsplit(":", 1)
        path = Path(head)
        if "@" in cell:
            cell, host = cell.split("@", 1)
    if not path.is_dir():
        raise UserError(f"{arg}: not a session folder (give DIR, DIR:CELL or DIR:CELL@HOST)")
    sdir = SessionDir(path)
    runs = sdir.read_runs()
    if not runs.records:
        raise UserError(f"{path}: no readable runs ({'; '.join(runs.problems) or 'runs.jsonl is empty'})")
    session, unread = sdir.read_session_if_readable()
    records = runs.records
    if host is not None:
        records = [r for r in records if run_host(r, session) == host]
        if not records:
            raise UserError(f"{path}: no runs on host {host!r} (hosts: {', '.join(hosts_of(session, runs.records))})")
    return Side(sdir, current_cell_id(cell) if cell else None, session, records, [*([unread] if unread and sdir.has_session() else []),
                                                            *runs.problems], host)


def _cells(side: Side) -> list[str]:
    return list(dict.fromkeys(r.cell_id for r in side.runs))


def _digests(side: Side, cell: str) -> dict[str, Any]:
    if side.session is None:
        raise UserError(f"{side.sdir.root}: session.json missing or unreadable: its model and input digests are unknown, "
                        "so it cannot be compared with another session")
    res = next((r.resolution for r in side.runs if r.cell_id == cell), None)
    inputs = side.session.inputs.get(str(res), {}).get("sha256", {})
    return {"model sha256": side.session.model.get("sha256"),
            "input latent sha256": inputs.get("latent"), "input text embedding sha256": inputs.get("text_embedding")}


def check_same_inputs(a: Side, b: Side, cell_a: str, cell_b: str) -> None:
    da, db = _digests(a, cell_a), _digests(b, cell_b)
    differ = [f"{k} differs: {a.sdir.root} has {da[k]}, {b.sdir.root} has {db[k]}" for k in da if da[k] != db[k]]
    if differ:
        raise UserError("refusing to compare: the sessions did not run the same model on the same inputs", *differ)


def pairs(a: Side, b: Side) -> list[tuple[str, str]]:
    """Which cells to compare: as named, the same id on the side that names none, or every common cell."""
    same = a.sdir.root.resolve() == b.sdir.root.resolve()
    if a.cell and b.cell:
        chosen = [(a.cell, b.cell)]
    elif same:
        raise UserError("name two cells of the session: orchestrate compare DIR:CELL_A DIR:CELL_B")
    elif named := a.cell or b.cell:
        chosen = [(named, named)]
    else:
        chosen = [(c, c) for c in _cells(a) if c in _cells(b)]
        if not chosen:
            raise UserError(f"{a.sdir.root} and {b.sdir.root} have no cell in common; name them as DIR:CELL")
    if len(chosen) == 1:  # named cells must exist; common cells do by construction
        for side, cell in ((a, chosen[0][0]), (b, chosen[0][1])):
            if cell not in _cells(side):
                raise UserError(f"{side.sdir.root}: no cell {cell!r} (cells: {', '.join(_cells(side))})")
    if not same:
        for ca, cb in chosen:
            check_same_inputs(a, b, ca, cb)
    return chosen


def _groups(side: Side) -> dict[str, list[str]]:
    return recorded_groups(side.session, f"{side.sdir.root}: session.json's matrix")


def group_sides(a: Side, b: Side) -> list[GroupRatio] | None:
    """`DIR:GROUP DIR:GROUP_OR_CELL`: each cell B names against the cells of group A, as the range
    of ratios of medians (the report's group ratios); None when neither side names a group."""
    groups = _groups(a)
    if a.cell not in groups and b.cell not in _groups(b):
        return None
    if a.sdir.root.resolve() != b.sdir.root.resolve():
        raise UserError("groups are compared within one session: orchestrate compare DIR:GROUP DIR:GROUP_OR_CELL")
    if a.cell not in groups:
        raise UserError(f"A must be a group of the session's matrix ({', '.join(groups)}); "
                        "B, a group or a cell, is stated against it")
    if b.cell is None or b.cell == a.cell or (b.cell not in groups and b.cell not in _cells(b)):
        raise UserError(f"B must be another group ({', '.join(g for g in groups if g != a.cell)}) "
                        f"or a cell ({', '.join(_cells(b))})")
    summary = build_summary(a.session, a.sdir.id, a.runs, [])
    return group_ratios({**groups, b.cell: groups.get(b.cell, [b.cell])}, medians_of(summary.cells),
                        only=(a.cell, b.cell))


def compare_sides(a: Side, b: Side) -> list[Comparison]:
    """B against A (A is the baseline: ratios are B / A)."""
    same = a.sdir.root.resolve() == b.sdir.root.resolve()
    out = []
    for ca, cb in pairs(a, b):
        la, lb = (a.label(ca), b.label(cb)) if same else (f"{a.sdir.id}:{a.label(ca)}", f"{b.sdir.id}:{b.label(cb)}")
        out += compare_runs(la, [r for r in a.runs if r.cell_id == ca], lb, [r for r in b.runs if r.cell_id == cb])
    return out
