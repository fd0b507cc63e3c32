"""report.html: the same report as report.md in one self-contained file (figures inline as SVG,
styles inline, no script, nothing fetched), readable offline and printable."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from orchestrator.report.reproduce import panel
from orchestrator.report.tables import (
    BUDGET_NOTE,
    EXPLANATION,
    GROUP_NOTE,
    HOSTS_NOTE,
    ReportInputs,
    Table,
    budget_table,
    cell_table,
    comparison_table,
    group_ratio_table,
    header_lines,
    host_cell_table,
    host_spread_table,
)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; font-size: 12.5px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
.warn li { color: #8a4b00; } .note { color: #555; }
figure { margin: 1em 0; page-break-inside: avoid; } figure svg { max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #555; }
dl.reproduce { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 12.5px; }
dl.reproduce dt { font-weight: 600; } dl.reproduce dd { margin: 0; word-break: break-all; }
li, dd { overflow-wrap: anywhere; }
@media print {
  body { margin: 0; max-width: none; font-size: 10px; } h2 { page-break-after: avoid; }
  table { width: 100%; font-size: 8px; page-break-inside: auto; } tr { page-break-inside: avoid; }
  th, td { padding: 2px 3px; overflow-wrap: break-word; } td.num { white-space: normal; }
}
"""

_SVG_PROLOG = re.compile(r"\A.*?(?=<svg)", re.S)


def _table(t: Table, css_class: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{escape(v)}</td>" if v[:1].isdigit() else f"<td>{escape(v)}</td>"
                                    for v in row) + "</tr>" for row in t.rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def inline_svg(path: Path) -> str:
    """The SVG element of a matplotlib file, without its XML prolog and doctype."""
    return _SVG_PROLOG.sub("", path.read_text(), count=1)


def render_html(r: ReportInputs, root: Path) -> str:
    s = r.summary
    parts = [f"<h1>Session {escape(str(s.session_id))}</h1>",
             "<ul>" + "".join(f"<li>{escape(h)}</li>" for h in header_lines(r)) + "</ul>",
             f'<p class="note">{escape(EXPLANATION)}</p>',
             "<h2>Results</h2>", _table(cell_table(s), "cells"),
             "<h2>Stability warnings</h2>",
             ('<ul class="warn">' + "".join(f"<li>{escape(w)}</li>" for w in r.warnings) + "</ul>") if r.warnings else "<p>None.</p>",
             "<h2>Comparisons</h2>", f"<p>{escape(r.baseline_note)}</p>"]
    if r.comparisons:
        parts.append(_table(comparison_table(r.comparisons), "comparisons"))
    if s.group_ratios:
        parts += ['<h2 id="group-ratios">Group ratios</h2>', f"<p>{escape(GROUP_NOTE)}</p>",
                  _table(group_ratio_table(s.group_ratios), "group-ratios")]
    if s.host_cells:
        parts += ['<h2 id="hosts">Hosts</h2>', f"<p>{escape(HOSTS_NOTE)}</p>",
                  _table(host_cell_table(s.host_cells), "host-cells")]
        if s.host_spreads:
            parts.append(_table(host_spread_table(s.host_spreads), "host-spreads"))
    if s.time_budget:
        parts += ['<h2 id="time-budget">Time budget</h2>', f"<p>{escape(BUDGET_NOTE)}</p>",
                  _table(budget_table(s.time_budget), "time-budget")]
    parts.append("<h2>Figures</h2>")
    for f in r.figures:
        if f.skipped is None:
            parts.append(f'<figure id="fig-{escape(f.name)}">{inline_svg(root / f.files[0])}'
                         f"<figcaption>{escape(f.title)} ({escape(', '.join(f.files))})"
                         f"{f'<br>{escape(f.note)}' if f.note else ''}</figcaption></figure>")
        else:
            parts.append(f'<p class="note skipped">{escape(f.title)}: left out: {escape(f.skipped)}</p>')
    failures = [(c.cell_id, f) for c in s.cells for f in c.failures]
    if failures:
        parts.append("<h2>Failed runs</h2><ul>" + "".join(
            f"<li>{escape(cid)} run {f.run_index}: {escape(str(f.reason))}</li>" for cid, f in failures) + "</ul>")
    if s.problems:
        parts.append("<h2>Problems reading the results</h2><ul>" + "".join(f"<li>{escape(p)}</li>" for p in s.problems) + "</ul>")
    parts.append('<h2 id="reproduce">Reproduce</h2><dl class="reproduce">' + "".join(
        f"<dt>{escape(label)}</dt><dd>{escape(text)}</dd>" for label, text in panel(r.session, r.runs)) + "</dl>")
    title = escape(f"Session {s.session_id}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
