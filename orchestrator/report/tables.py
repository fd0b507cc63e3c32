"""report.md and the tables every report shares (markdown, HTML, terminal): what a person reads
after a session. Derived from summary.json, session.json and the runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.report.reproduce import panel
from orchestrator.report.stability import deviation
from orchestrator.results.budget import TimeBudget
from orchestrator.results.compare import Comparison
from orchestrator.results.flags import FLAGS
from orchestrator.results.groups import GroupRatio
from orchestrator.results.hosts import HostCell, HostSpread
from orchestrator.results.records import RunRecord, SessionRecord
from orchestrator.results.summary import CellSummary, ConversionSummary, RunValue, Summary


def fmt(value: float | None, spec: str = ".4g") -> str:
    return "–" if value is None else format(value, spec)


def latency_cell(c: CellSummary) -> str:
    if c.latency_ms_median is None:
        return "–"
    return f"{c.latency_ms_median:.2f} [{c.latency_ms_p10:.2f}–{c.latency_ms_p90:.2f}]"


def energy_cell(c: CellSummary) -> str:
    if c.energy_per_step_j is None:
        return "–"
    return f"{c.energy_per_step_j:.4g} [{c.energy_per_step_j_p10:.4g}–{c.energy_per_step_j_p90:.4g}]"


def metric_cell(c: CellSummary, key: str) -> str:
    """median [p10–p90] of any per-run metric in the cell's `metrics`."""
    m = c.metrics.get(key)
    return "–" if m is None else f"{m.median:.4g} [{m.p10:.4g}–{m.p90:.4g}]"


def image_estimate_cell(c: CellSummary) -> str:
    return metric_cell(c, "estimated_energy_per_50_step_image_j")


def divergence_cell(c: CellSummary) -> str:
    if c.numerically_divergent is None:
        return "not checked"
    return f"DIVERGENT (runs {', '.join(map(str, c.divergent_runs))})" if c.numerically_divergent else "ok"


OUTLIER_VALUES = {"outlier": (".2f", "ms"), "energy_outlier": (".4g", "J")}


def flags(c: CellSummary) -> str:
    """The flags column: every flag of the flags table the cell's runs carry, then the cell's own."""
    out = []
    for flag in FLAGS:
        runs = getattr(c, flag.field)
        if flag.own_column or not runs:
            continue
        if flag.name in OUTLIER_VALUES:
            spec, unit = OUTLIER_VALUES[flag.name]
            out.append(f"{flag.column}: " + ", ".join(
                f"run {o.run_index} ({o.value:{spec}} {unit}, {deviation(c, flag.name, o.value)})"
                for o in runs if isinstance(o, RunValue)))
        else:
            out.append(f"{flag.column}: runs " + ", ".join(map(str, runs)))
    if c.n_ok and c.output_sha256_distinct > 1:
        out.append(f"{c.output_sha256_distinct} distinct outputs across runs")
    if c.n_ok and c.n_ok < 3:
        out.append(f"only {c.n_ok} ok run(s)")
    return "; ".join(out)


def describe_cell(c: CellSummary) -> str:
    where = c.device or c.compute_unit or "?"
    return f"{c.backend or '?'} {where} {c.precision or '?'}"


def _megabytes(v: ConversionSummary) -> float | None:
    return v.package_bytes / 1e6 if v.package_bytes is not None else None


def conversion_lines(cells: list[CellSummary]) -> list[str]:
    """Core ML conversions: what converted each cell's model and what each step took. A cache
    hit took no conversion step: its step times are those recorded when it was converted."""
    rows = [(c, c.conversion) for c in cells if c.conversion]
    if not rows:
        return []
    lines = ["", "## Core ML conversions", "",
             "Conversion runs in the worker's load, before any timed window. Step times of a cache hit are those of",
             "the session that converted it; `prepare s` is this session's time to get the model (cache lookup, or",
             "conversion), `verify s` its time to check the model's spec.",
             "",
             "| cell | converter | coremltools / torch | this session | trace s | convert s | palettize s | compile s | prepare s | verify s | package MB | bits/weight |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c, v in rows:
        st = v.steps
        how = "cache hit" if v.cache_hit else f"converted (runs {', '.join(map(str, v.runs_that_converted))})"
        lines.append(
            f"| {c.cell_id} | {v.converter} {v.converter_version} | {v.coremltools} / {v.torch} | {how} | "
            f"{fmt(st.get('trace_s'), '.1f')} | {fmt(st.get('convert_s'), '.1f')} | {fmt(st.get('palettize_s'), '.1f')} | "
            f"{fmt(st.get('compile_s'), '.1f')} | {fmt(v.prepare_s, '.3g')} | {fmt(v.verify_s, '.3g')} | "
            f"{fmt(_megabytes(v), '.2f')} | {fmt(v.bits_per_weight, '.2f')} |")
    return lines


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    whole: tuple[str, ...] = ()  # columns never cut or wrapped (ids a reader pastes); the others wrap


def energy_channels(summary: Summary) -> list[str]:
    """Measured channels other than `total`, whose figure is the cell's energy_per_step_j."""
    return sorted({ch for c in summary.cells for ch in c.channels if ch != "total"})


def cell_table(summary: Summary) -> Table:
    """One row per cell; energy columns only when some cell has energy."""
    channels = energy_channels(summary)
    energy = any(c.energy_per_step_j is not None for c in summary.cells)
    headers = ["cell", "backend device precision", "runs ok/failed", "latency ms median [p10–p90]", "IQR ms"]
    if energy:
        headers += [f"energy J/step {ch} [p10–p90]" for ch in channels]
        headers += ["energy J/step total, median [p10–p90]", "est. J/image (50 x step) [p10–p90]"]
    headers += ["cosine (min)", "MSE (max)", "divergence", "flags"]
    rows = []
    for c in summary.cells:
        if c.status == "unsupported":
            rows.append([c.cell_id, describe_cell(c), "unsupported", *["–"] * (len(headers) - 4),
                         c.unsupported_reason or ""])
            continue
        row = [c.cell_id, describe_cell(c), f"{c.n_ok}/{c.n_failed}", latency_cell(c), fmt(c.latency_ms_iqr)]
        if energy:
            row += [metric_cell(c, f"energy_per_step_j[{ch}]") for ch in channels]
            row += [energy_cell(c), image_estimate_cell(c)]
        row += [fmt(c.cosine_min, ".7f"), fmt(c.mse_max), divergence_cell(c), flags(c)]
        rows.append(row)
    return Table(headers, rows, whole=("cell",))


def common_sessions(comparisons: list[Comparison]) -> tuple[str, str] | None:
    """(B's session, A's session) when every row compares one session with another (labels
    `SESSION:CELL`): the table then names them once and shows the cell ids alone."""
    others = {c.other.partition(":")[0] for c in comparisons if ":" in c.other}
    baselines = {c.baseline.partition(":")[0] for c in comparisons if ":" in c.baseline}
    every = all(":" in c.other and ":" in c.baseline for c in comparisons)
    return (others.pop(), baselines.pop()) if every and len(others) == len(baselines) == 1 else None


def comparison_table(comparisons: list[Comparison]) -> Table:
    across = common_sessions(comparisons) is not None
    headers = ["metric", "cell", "vs", "medians", "ratio of medians", "ratio range (p10–p90 / p10–p90)",
               "Hodges-Lehmann shift [CI]", "Mann-Whitney p", "verdict"]
    rows = []
    for c in comparisons:
        t = c.test
        shift = "–" if t is None else f"{t.hl_shift:+.4g} {c.unit} [{t.hl_ci[0]:+.4g}, {t.hl_ci[1]:+.4g}] ({t.hl_ci_level:.1%})"
        p = "–" if t is None else f"{t.p:.3g} ({t.method}, U = {t.u:g})"
        ratio = "–" if c.ratio_of_medians is None else f"{c.ratio_of_medians:.4g}x"
        rng = "–" if c.ratio_range is None else f"{c.ratio_range[0]:.4g}–{c.ratio_range[1]:.4g}x"
        other, baseline = (c.other.partition(":")[2], c.baseline.partition(":")[2]) if across else (c.other, c.baseline)
        rows.append([c.metric, other, baseline, f"{c.other_median:.4g} vs {c.baseline_median:.4g} {c.unit}",
                     ratio, rng, shift, p, c.verdict])
    return Table(headers, rows, whole=("cell", "vs"))


def group_ratio_table(ratios: list[GroupRatio]) -> Table:
    """Each cell of a group against another group: the range of cell / group-cell ratios of medians."""
    headers = ["metric", "cell", "group", "against", "median", "lowest ratio (cell)", "highest ratio (cell)",
               "in words"]
    rows = [[r.metric, r.cell, r.group, f"{r.against} ({r.n_against} of {r.n_against + len(r.missing)} cells)", f"{r.median:.4g} {r.unit}",
             f"{r.lowest.ratio:.4g}x ({r.lowest.cell}: {r.lowest.median:.4g} {r.unit})",
             f"{r.highest.ratio:.4g}x ({r.highest.cell}: {r.highest.median:.4g} {r.unit})", r.statement]
            for r in ratios]
    return Table(headers, rows)


GROUP_NOTE = ("Each cell of a group (`[report] groups` in the matrix) against every cell of the other group: the "
              "ratios of medians, cell / group cell, from the lowest to the highest, each end a measured cell.")


def budget_table(budgets: list[TimeBudget]) -> Table:
    """Each part of the runs' wall time in seconds and as a share of it."""
    headers = ["scope", "runs", "wall s", "load", "cooldown", "baseline", "warmup", "timed window", "other",
               "wall / irreducible"]

    def part(b: TimeBudget, seconds: float) -> str:
        return f"{seconds:.1f} ({seconds / b.wall_s:.0%})" if b.wall_s > 0 else f"{seconds:.1f}"

    rows = [[b.scope, str(b.runs), f"{b.wall_s:.1f}" + (f" (session {b.session_wall_s:.1f})" if b.session_wall_s else ""),
             *(part(b, s) for s in (b.load_s, b.cooldown_s, b.baseline_s, b.warmup_s, b.window_s, b.other_s)),
             "–" if b.wall_over_irreducible is None else f"{b.wall_over_irreducible:.2f}x"] for b in budgets]
    return Table(headers, rows, whole=("scope",))


BUDGET_NOTE = ("Where the runs' wall time went (worker start to exit, summed over runs of any status), in seconds and "
               "as a share of it. Irreducible: cooldown + baseline + warmup + timed window, what the method needs "
               "even with an instant load. The session's own start-to-finish time, when shown, also holds the "
               "idle-power window, the fork servers' imports, the references and the waits between runs (env syncs "
               "and pinning come before it).")


def _median_range(median: float | None, p10: float | None, p90: float | None, spec: str) -> str:
    return "–" if median is None else f"{median:{spec}} [{p10:{spec}}–{p90:{spec}}]"


def host_cell_table(cells: list[HostCell]) -> Table:
    """Each cell's runs on each host, summarised as the results table summarises all of them."""
    headers = ["host", "cell", "runs ok/failed", "latency ms median [p10–p90]", "energy J/step median [p10–p90]"]
    rows = [[c.host, c.cell_id, f"{c.n_ok}/{c.n_failed}",
             _median_range(c.latency_ms_median, c.latency_ms_p10, c.latency_ms_p90, ".2f"),
             _median_range(c.energy_per_step_j, c.energy_per_step_j_p10, c.energy_per_step_j_p90, ".4g")]
            for c in cells]
    return Table(headers, rows, whole=("host", "cell"))


def host_spread_table(spreads: list[HostSpread]) -> Table:
    headers = ["cell", "metric", "per host: median (ok runs)", "between-host SD", "within-host SD", "host share",
               "p (permutation)", "host effect"]
    rows = [[s.cell_id, f"{s.metric} ({s.unit})", "; ".join(f"{h.host}: {h.median:.4g} ({h.n})" for h in s.hosts),
             f"{s.between_sd:.4g}", f"{s.within_sd:.4g}", "–" if s.between_share is None else f"{s.between_share:.0%}",
             "–" if s.p is None else f"{s.p:.2g} ({s.method})", s.verdict] for s in spreads]
    return Table(headers, rows, whole=("cell",))


HOSTS_NOTE = ("The runs came from several hosts (a merged session, or one resumed on another machine): each cell's "
              "runs on each host, then, for cells measured on two or more, their spread split into a between-host "
              "and a within-host (run-to-run) part (one-way random effects) and whether the host effect is larger "
              "than the run-to-run noise (a permutation test of the runs' host labels).")


def host_lines(session: SessionRecord | None) -> list[str]:
    """Each host of a merged session and its hardware."""
    return [f"Host {name}: {_host_line(entry.get('host') or {})}" for name, entry in (session.hosts if session else {}).items()]


def markdown_table(t: Table) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |"
    return [line(t.headers), "|" + "---|" * len(t.headers), *(line(r) for r in t.rows)]


@dataclass(frozen=True)
class ReportInputs:
    """What every rendering of a session's report shows."""

    summary: Summary
    session: SessionRecord | None  # None: session.json is missing
    runs: list[RunRecord]
    comparisons: list[Comparison]
    baseline: str | None
    baseline_note: str  # why there are no comparisons, or where the baseline came from
    warnings: list[str]
    figures: list[Any]  # figures.Figure: drawn (files) or left out (reason)


def header_lines(r: ReportInputs) -> list[str]:
    summary, session = r.summary, r.session
    model, eq = summary.model, summary.equivalence
    host = session.provenance.get("host", {}) if session else {}
    synthetic = "synthetic weights (right compute, not real images)" if model.get("synthetic") else "checkpoint"
    resumes = [f"Resumed {x.get('at')} " + (f"on: {_host_line(x['host'])}" if x.get("host") else "(host not recorded)")
               for x in (session.resumes if session else [])]
    return [
        f"Status: {summary.status}; {summary.n_runs} runs recorded",
        f"Model: {model.get('preset')} — {synthetic}; sha256 {model.get('sha256')}",
        *(host_lines(session) or [f"Host: {_host_line(host)}", *resumes]),
        f"Equivalence reference: fp32; divergent when MSE > {eq.get('mse_max')} or cosine < {eq.get('cosine_min')}",
        f"Energy: {summary.energy_unavailable_reason or 'measured by ' + str(summary.meter)}",
    ]


def _host_line(host: dict[str, Any]) -> str:
    return f"{host.get('cpu')} · {host.get('os')} · GPUs: {', '.join(host.get('gpus') or []) or 'none'}"


EXPLANATION = ("Latency and energy are per UNet step: per run, the median over its iterations (latency) or the "
               "baseline-subtracted energy of its timed window divided by its iterations; then the median and "
               "p10–p90 across runs. Energy per image is an estimate: 50 x the energy per step, not a measured image.")


def render_markdown(r: ReportInputs) -> str:
    summary = r.summary
    lines = [f"# Session {summary.session_id}", "", *(f"- {h}" for h in header_lines(r)), "", EXPLANATION, ""]
    lines += markdown_table(cell_table(summary))
    lines += conversion_lines(summary.cells)
    lines += ["", "## Stability warnings", ""]
    lines += [f"- {w}" for w in r.warnings] or ["None."]
    lines += ["", "## Comparisons", "", r.baseline_note]
    if r.comparisons:
        lines += ["", *markdown_table(comparison_table(r.comparisons))]
    if summary.group_ratios:
        lines += ["", "## Group ratios", "", GROUP_NOTE, "", *markdown_table(group_ratio_table(summary.group_ratios))]
    if summary.host_cells:
        lines += ["", "## Hosts", "", HOSTS_NOTE, "", *markdown_table(host_cell_table(summary.host_cells))]
        if summary.host_spreads:
            lines += ["", *markdown_table(host_spread_table(summary.host_spreads))]
    if summary.time_budget:
        lines += ["", "## Time budget", "", BUDGET_NOTE, "", *markdown_table(budget_table(summary.time_budget))]
    lines += ["", "## Figures", ""]
    for f in r.figures:
        lines.append(f"![{f.title}]({f.files[0]})" if f.skipped is None else f"- {f.title}: left out: {f.skipped}")
        if f.skipped is None and f.note:
            lines += ["", f"*{f.note}*"]
        lines.append("")
    failures = [(c.cell_id, f) for c in summary.cells for f in c.failures]
    if failures:
        lines += ["## Failed runs", ""]
        lines += [f"- {cid} run {f.run_index}: {f.reason}" for cid, f in failures] + [""]
    if summary.problems:
        lines += ["## Problems reading the results", ""] + [f"- {p}" for p in summary.problems] + [""]
    lines += ["## Reproduce", ""] + [f"- **{label}**: {text}" for label, text in panel(r.session, r.runs)]
    return "\n".join(lines) + "\n"
