"""Everything derived from a session folder, regenerable at any time from session.json and
runs.jsonl: summary.json, runs.csv, figures/, report.md and report.html."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.matrix import read_report
from orchestrator.errors import UserError
from orchestrator.report.csv import write_runs_csv
from orchestrator.report.figures import all_figures
from orchestrator.report.html import render_html
from orchestrator.report.stability import warnings as stability_warnings
from orchestrator.report.tables import ReportInputs, render_markdown
from orchestrator.results.compare import Comparison, compare_runs
from orchestrator.results.groups import group_ratios, medians_of, recorded_groups
from orchestrator.results.records import RunRecord, SessionRecord, current_cell_id
from orchestrator.results.store import SessionDir, write_json
from orchestrator.results.summary import FigureEntry, Summary, build_summary
from workers.contract.typed import to_dict

FIGURES = "figures"


@dataclass
class WrittenReport:
    summary: Summary
    out: Path
    inputs: ReportInputs


def choose_baseline(summary: Summary, session: SessionRecord | None, requested: str | None) -> tuple[str | None, str]:
    """The baseline cell (`--baseline` first, then the matrix's `[report] baseline`) and a line saying so."""
    content = (session.matrix.get("content") or {}) if session else {}
    try:
        from_matrix = read_report(content, f"session {summary.session_id}: matrix").baseline
    except UserError as e:  # a damaged session.json: named, and the report goes on without a baseline
        if not requested:
            return None, f"No baseline: {'; '.join(e.lines)}."
        from_matrix = None
    chosen, source = (requested, "--baseline") if requested else (from_matrix, "[report] baseline in the matrix")
    if chosen is None:
        return None, 'No baseline: set [report] baseline = "<cell id>" in the matrix or pass --baseline ID.'
    chosen = current_cell_id(chosen)
    ids = [c.cell_id for c in summary.cells]
    if chosen not in ids and not requested:  # an interrupted session may not have reached it
        return None, f"No comparisons: the baseline {chosen} ({source}) has no runs in this session."
    if chosen not in ids:
        raise UserError(f"session {summary.session_id}: baseline {chosen!r} ({source}) is not a cell of it "
                        f"(cells: {', '.join(ids) or 'none'})")
    return chosen, f"Each cell against the baseline {chosen} ({source}); ratios are cell / baseline."


def comparisons(summary: Summary, runs: list[RunRecord], baseline: str) -> list[Comparison]:
    by_cell: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_cell.setdefault(r.cell_id, []).append(r)
    return [cmp for c in summary.cells if c.cell_id != baseline
            for cmp in compare_runs(baseline, by_cell.get(baseline, []), c.cell_id, by_cell.get(c.cell_id, []))]


@dataclass
class Derived:
    """What a session's files yield before anything is drawn or written."""

    summary: Summary  # with the comparisons and warnings; figures not yet
    session: SessionRecord | None
    runs: list[RunRecord]
    baseline_note: str


def derive(sdir: SessionDir, baseline: str | None = None) -> Derived:
    """Read the session and summarise it, compare each cell with the baseline, list the warnings."""
    runs = sdir.read_runs()
    problems = list(runs.problems)
    session, unread = sdir.read_session_if_readable()
    if unread:
        problems.insert(0, unread)
    summary = build_summary(session, sdir.id, runs.records, problems)
    chosen, note = choose_baseline(summary, session, baseline)
    summary.baseline = chosen
    summary.comparisons = comparisons(summary, runs.records, chosen) if chosen else []
    summary.group_ratios = group_ratios(recorded_groups(session, f"session {summary.session_id}: matrix"), medians_of(summary.cells))
    summary.warnings = stability_warnings(summary)
    return Derived(summary, session, runs.records, note)


def write_report(sdir: SessionDir, out: Path | None = None, baseline: str | None = None) -> WrittenReport:
    """Read the session, write every derived file into `out` (the session folder by default); a
    file that cannot be written (a folder in its place, a full disk) is one UserError naming it."""
    out = out or sdir.root
    d = derive(sdir, baseline)
    try:
        return _write(d, out)
    except OSError as e:
        raise UserError(f"{e.filename or out}: cannot be written ({e.strerror or e}); the report is incomplete") from None


def _write(d: Derived, out: Path) -> WrittenReport:
    out.mkdir(parents=True, exist_ok=True)
    summary = d.summary
    figs = all_figures(summary, d.runs, d.session, out / FIGURES)
    summary.figures = [FigureEntry(name=f.name, title=f.title, files=f.files, skipped=f.skipped) for f in figs]
    inputs = ReportInputs(summary=summary, session=d.session, runs=d.runs, comparisons=summary.comparisons,
                          baseline=summary.baseline, baseline_note=d.baseline_note, warnings=summary.warnings,
                          figures=figs)
    write_json(out / "summary.json", to_dict(summary))
    write_runs_csv(out / "runs.csv", d.runs)
    (out / "report.md").write_text(render_markdown(inputs))
    (out / "report.html").write_text(render_html(inputs, out))
    return WrittenReport(summary=summary, out=out, inputs=inputs)
