"""What a person sees while a session runs: a progress bar (run k of n, cell, ETA), one line per
finished run, and the summary table at the end. Everything goes to stderr except the table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table as RichTable
from rich.text import Text

from orchestrator.config.matrix import Matrix
from orchestrator.config.plan import PlannedRun, describe_plan
from orchestrator.report.reasons import again
from orchestrator.report.tables import Table, cell_table, fmt
from orchestrator.results.flags import run_labels
from orchestrator.results.records import RunRecord
from orchestrator.results.summary import Summary


class RunProgress:
    def __init__(self, progress: Progress, task: TaskID, console: Console):
        self._p, self._task, self._console = progress, task, console

    def start_run(self, planned: PlannedRun, cell: Any, total: int) -> None:
        self._p.update(self._task, description=escape(f"{cell.id} run {planned.run_index}"))

    def end_run(self, rec: RunRecord, runs_per_cell: int) -> None:
        head = f"{rec.cell_id} run {rec.run_index} ({rec.run_index + 1} of {runs_per_cell})"
        if rec.host:  # a fleet session: where it ran, and which attempt
            head += f" on {rec.host}" + (f", attempt {rec.attempt}" if (rec.attempt or 1) > 1 else "")
        if rec.status == "ok":
            eq = "" if rec.cosine is None else f"  cosine {rec.cosine:.6f}"
            if rec.energy_per_step_j is not None:
                eq += f"  {rec.energy_per_step_j:.4g} J/step net ({fmt(rec.gross_energy_per_step_j)} gross)"
            self._console.print(escape(f"  {head}: ok  {fmt(rec.latency_ms_median, '.2f')} ms/step (IQR "
                                       f"{fmt(rec.latency_ms_iqr, '.2f')}, {rec.iterations} it){eq}") + run_flags(rec),
                                highlight=False)
        else:  # the reason is a worker's or a meter's text: printed as text, never as markup
            style = "yellow" if rec.status == "unsupported" else "red"
            self._console.print(f"  {escape(head)}: [{style}]{rec.status}[/]: {escape(rec.failure_reason or '')}",
                                highlight=False)
        self._p.advance(self._task)


def run_flags(rec: RunRecord) -> str:
    """What a person should know about this run before trusting its numbers (the flags table), as
    console markup: the brackets escaped, or rich would take `[throttled]` for a style and drop it."""
    labels = run_labels(rec)
    return escape(f"  [{', '.join(labels)}]") if labels else ""


class Display:
    def __init__(self, quiet: bool = False):
        # Logs and CI output are not terminals: give them full lines instead of 80 columns.
        self.err = Console(stderr=True, quiet=quiet)
        self.out = Console()
        for console in (self.err, self.out):
            if not console.is_terminal:
                console.width = 160
        self.explained: dict[str, str] = {}  # reason -> the line that gave it in full

    def log(self, message: str) -> None:
        """One line, never wrapped by us (commands and paths in it stay pasteable; a terminal wraps
        only its display)."""
        self.err.print(message, highlight=False, markup=False, soft_wrap=True)

    def explain(self, label: str, reason: str) -> None:
        """`label: reason`, the reason in full the first time this display gives it, then referred to."""
        self.err.print(f"{label}: {again(reason, self.explained[reason]) if reason in self.explained else reason}",
                       highlight=False, markup=False, soft_wrap=True)
        self.explained.setdefault(reason, f"'{label}'")

    def plan(self, matrix: Matrix, plan: list[PlannedRun], seed: int | None, done: int = 0) -> None:
        """The plan a session is about to run, or that `orchestrate check` found."""
        for line in describe_plan(matrix, plan, seed, done):
            self.log(line)

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)  # brackets are text

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        with self.err.status(Text(message)):
            yield

    @contextmanager
    def progress(self, total: int, completed: int = 0) -> Iterator[RunProgress]:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=self.err, transient=True) as p:
            task = p.add_task("starting", total=total, completed=completed)
            yield RunProgress(p, task, self.err)

    def table(self, t: Table, title: str | None = None) -> None:
        """Cells as plain text: brackets such as [p10–p90] are data, not rich markup."""
        rt = RichTable(title=title, title_justify="left")
        for i, col in enumerate(t.headers):
            if col in t.whole:  # as wide as its longest value; the other columns wrap to make room
                rt.add_column(Text(col), no_wrap=True, min_width=max((len(r[i]) for r in t.rows), default=0))
            else:
                rt.add_column(Text(col), overflow="fold")  # a long word breaks across lines, never cut
        for row in t.rows:
            rt.add_row(*map(Text, row))
        self.out.print(rt)

    def summary_table(self, summary: Summary) -> None:
        self.table(cell_table(summary), f"session {summary.session_id}")
        if reason := summary.energy_unavailable_reason:
            self.out.print(f"energy: {again(reason, self.explained[reason]) if reason in self.explained else reason}",
                           highlight=False, markup=False, soft_wrap=True)
            self.explained.setdefault(reason, "'energy'")
