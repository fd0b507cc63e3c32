"""Everything derived from a session folder, regenerable at any time from session.json and
runs.jsonl: summary.json, runs.csv, figures/, report.md and report.html."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.matrix import read_report
from orchestrator.errors import UserError
from orchestrator.report.csv import write_runs_csv
from orchestrator.report.figures import all_figures
from orchestrator.report.html import render_html
from orchestrator.report.stability import warnings as stability_warnings
from orchestrator.report.tables import ReportInputs, render_markdown
from orchestrator.results.compare import Comparison, compare_runs
from orchestrator.results.store import SessionDir, write_json
from orchestrator.results.summary import build_summary

FIGURES = "figures"


@dataclass
class WrittenReport:
    summary: dict[str, Any]
    out: Path
    inputs: ReportInputs


def choose_baseline(summary: dict[str, Any], session: dict[str, Any], requested: str | None) -> tuple[str | None, str]:
    """The baseline cell (`--baseline` first, then the matrix's `[report] baseline`) and a line saying so."""
    content = (session.get("matrix") or {}).get("content") or {}
    from_matrix = read_report(content, f"session {summary['session_id']}: matrix").baseline
    chosen, source = (requested, "--baseline") if requested else (from_matrix, "[report] baseline in the matrix")
    if chosen is None:
        return None, 'No baseline: set [report] baseline = "<cell id>" in the matrix or pass --baseline ID.'
    ids = [c["cell_id"] for c in summary["cells"]]
    if chosen not in ids and not requested:  # an interrupted session may not have reached it
        return None, f"No comparisons: the baseline {chosen} ({source}) has no runs in this session."
    if chosen not in ids:
        raise UserError(f"session {summary['session_id']}: baseline {chosen!r} ({source}) is not a cell of it "
                        f"(cells: {', '.join(ids) or 'none'})")
    return chosen, f"Each cell against the baseline {chosen} ({source}); ratios are cell / baseline."


def comparisons(summary: dict[str, Any], runs: list[dict[str, Any]], baseline: str) -> list[Comparison]:
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_cell.setdefault(r["cell_id"], []).append(r)
    return [cmp for c in summary["cells"] if c["cell_id"] != baseline
            for cmp in compare_runs(baseline, by_cell.get(baseline, []), c["cell_id"], by_cell.get(c["cell_id"], []))]


def write_report(sdir: SessionDir, out: Path | None = None, baseline: str | None = None) -> WrittenReport:
    """Read the session, write every derived file into `out` (the session folder by default)."""
    out = out or sdir.root
    out.mkdir(parents=True, exist_ok=True)
    runs = sdir.read_runs()
    problems = list(runs.problems)
    if sdir.has_session():
        session = sdir.read_session()
    else:
        session = {"session_id": sdir.id}
        problems.insert(0, f"{sdir.root / 'session.json'}: missing; cell descriptions and provenance are unknown")
    summary = build_summary(session, runs.records, problems)
    chosen, note = choose_baseline(summary, session, baseline)
    cmps = comparisons(summary, runs.records, chosen) if chosen else []
    warns = stability_warnings(summary)
    summary["baseline"] = chosen
    summary["comparisons"] = [c.as_dict() for c in cmps]
    summary["warnings"] = warns
    figs = all_figures(summary, runs.records, out / FIGURES)
    summary["figures"] = [{"name": f.name, "title": f.title, "files": f.files, "skipped": f.skipped} for f in figs]
    inputs = ReportInputs(summary=summary, session=session, runs=runs.records, comparisons=cmps, baseline=chosen,
                          baseline_note=note, warnings=warns, figures=figs)
    write_json(out / "summary.json", summary)
    write_runs_csv(out / "runs.csv", runs.records)
    (out / "report.md").write_text(render_markdown(inputs))
    (out / "report.html").write_text(render_html(inputs, out))
    return WrittenReport(summary=summary, out=out, inputs=inputs)
