"""Per-cell summary of a session (summary.json), derived from runs.jsonl alone so it can always
be regenerated (`orchestrate report DIR`). Every numeric per-run metric goes through the same
statistics. The summary's fields are defined once here, documented where they are declared; the
tables in docs/results-format.md are generated from them (`python -m orchestrator.results.fields_doc`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.results.budget import TimeBudget, time_budgets
from orchestrator.results.compare import Comparison
from orchestrator.results.flags import FLAGS, flagged
from orchestrator.results.groups import GroupRatio
from orchestrator.results.hosts import HostCell, HostSpread, host_cells, host_spreads, hosts_of
from orchestrator.results.records import RunRecord, SessionRecord
from orchestrator.results.stats import across_runs
from orchestrator.results.store import utc_now
from orchestrator.results.values import run_values
from workers.contract.typed import field

SUMMARY_SCHEMA_VERSION = 1  # of summary.json's layout, which has not changed since it was first written

# Per-run numeric metrics summarised across a cell's ok runs.
RUN_METRICS = (
    "latency_ms_median", "latency_ms_iqr", "latency_ms_min", "load_s", "mse", "mse_relative", "cosine",
    "energy_per_step_j", "gross_energy_per_step_j", "estimated_energy_per_50_step_image_j", "baseline_w", "active_w",
)
CHANNEL_METRICS = ("energy_per_step_j", "gross_energy_per_step_j", "baseline_w", "active_w")


@dataclass
class RunValue:
    run_index: int = field(doc="the run")
    value: float = field(finite=False, doc="its value of the metric")


@dataclass
class MetricStats:
    """One per-run metric across a cell's ok runs (numpy's linear percentiles)."""

    n: int = field(unit="count", doc="ok runs with a value")
    median: float = field(doc="across those runs")
    p10: float = field(doc="10th percentile across runs")
    p90: float = field(doc="90th percentile across runs")
    mad: float = field(doc="median absolute deviation from the median (unscaled)")
    min: float = field(doc="smallest run value")
    max: float = field(doc="largest run value")
    outlier_runs: list[RunValue] = field(factory=list, doc="runs more than 3 scaled MADs from the median")


@dataclass
class Failure:
    run_index: int = field(doc="the failed run")
    reason: str | None = field(None, doc="its `failure_reason`")


@dataclass
class ConversionSummary:
    """The cell's converted model (Core ML), as its first run that recorded one saw it."""

    converter: str | None = field(None, doc="the converter's name")
    converter_version: str | None = field(None, doc="its version")
    coremltools: str | None = field(None, doc="coremltools version used to convert")
    torch: str | None = field(None, doc="torch version used to trace")
    key: str | None = field(None, doc="the conversion cache key")
    cache_hit: bool | None = field(None, doc="the model came from the cache")
    steps: dict[str, Any] = field(factory=dict, unit="s", doc="time per conversion step (`trace_s`, `convert_s`, "
                                                              "`palettize_s`, `compile_s`) when it was converted")
    prepare_s: float | None = field(None, unit="s", doc="this session's time to get the model (lookup or conversion)")
    verify_s: float | None = field(None, unit="s", doc="this session's time to check the model's spec")
    package_bytes: int | None = field(None, unit="bytes", doc="size of the compiled package")
    weight_bytes: int | None = field(None, unit="bytes", doc="size of its weights")
    bits_per_weight: float | None = field(None, doc="after palettization")
    spec: Any = field(None, doc="the model spec as checked")
    runs_that_converted: list[int] = field(factory=list, doc="runs whose own worker converted the model")


@dataclass
class CellSummary:
    """One cell of summary.json `cells[]`: the matrix's description of it, then its runs summarised.
    Medians and percentiles are across the cell's ok runs of each run's own value."""

    cell_id: str = field(doc="the cell's id in the matrix")
    label: str | None = field(None, doc="as the matrix resolved it (null when session.json is missing)")
    backend: str | None = field(None, doc="as the matrix resolved it")
    env: str | None = field(None, doc="as the matrix resolved it")
    device: str | None = field(None, doc="as the matrix resolved it")
    compute_unit: str | None = field(None, doc="as the matrix resolved it (Core ML)")
    precision: str | None = field(None, doc="as the matrix resolved it")
    attention: str | None = field(None, doc="as the matrix resolved it")
    resolution: int | None = field(None, unit="px", doc="as the matrix resolved it")
    notes: str | None = field(None, doc="as the matrix resolved it")
    options: dict[str, Any] | None = field(None, doc="the backend's options, as the matrix resolved them")
    status: str = field("unsupported", doc="`ok` (all runs ok), `partial` (some failed), `failed`, `unsupported` or "
                                           "`not run` (planned; the session ended before any of its runs)")
    n_runs: int = field(0, unit="count", doc="runs recorded")
    n_ok: int = field(0, unit="count", doc="runs with status ok")
    n_failed: int = field(0, unit="count", doc="runs with status failed")
    n_unsupported: int = field(0, unit="count", doc="runs with status unsupported")
    unsupported_reason: str | None = field(None, doc="the first unsupported run's reason")
    failures: list[Failure] = field(factory=list, doc="each failed run and why")
    realized: dict[str, Any] = field(factory=dict, doc="what ran, from the first ok run (or the first run)")
    versions: dict[str, Any] = field(factory=dict, doc="the worker's toolchain versions, likewise")
    latency_ms_median: float | None = field(None, unit="ms", doc="median of the runs' median latency per step")
    latency_ms_p10: float | None = field(None, unit="ms", doc="p10 of the runs' median latency")
    latency_ms_p90: float | None = field(None, unit="ms", doc="p90 of the runs' median latency")
    latency_ms_mad: float | None = field(None, unit="ms", doc="MAD of the runs' median latency")
    latency_ms_iqr: float | None = field(None, unit="ms", doc="median of the runs' within-run IQR")
    outlier_runs: list[RunValue] = field(factory=list, doc="runs whose latency is an outlier (see the flags)")
    cosine_min: float | None = field(None, finite=False, doc="lowest cosine with the reference over ok runs")
    mse_max: float | None = field(None, finite=False, doc="highest MSE against the reference over ok runs")
    numerically_divergent: bool | None = field(None, doc="some ok run diverged (null: none was compared)")
    divergent_runs: list[int] = field(factory=list, doc="the ok runs that diverged")
    output_sha256_distinct: int = field(0, unit="count", doc="distinct output digests over ok runs")
    energy_per_step_j: float | None = field(None, unit="J", doc="median net energy per step, all channels")
    energy_per_step_j_p10: float | None = field(None, unit="J", doc="its p10 across runs")
    energy_per_step_j_p90: float | None = field(None, unit="J", doc="its p90 across runs")
    energy_outlier_runs: list[RunValue] = field(factory=list, doc="runs whose energy per step is an outlier")
    gross_energy_per_step_j: float | None = field(None, unit="J", doc="median gross energy per step")
    estimated_energy_per_50_step_image_j: float | None = field(None, unit="J", doc="median of 50 x energy per step: "
                                                                                   "an estimate, not a measured image")
    estimated_energy_per_50_step_image_j_p10: float | None = field(None, unit="J", doc="its p10 across runs")
    estimated_energy_per_50_step_image_j_p90: float | None = field(None, unit="J", doc="its p90 across runs")
    channels: list[str] = field(factory=list, doc="energy channels the ok runs measured (`total` among them)")
    throttled_runs: list[int] = field(factory=list, doc="runs flagged `throttled` (see the flags)")
    short_window_runs: list[int] = field(factory=list, doc="runs flagged `short_window`")
    forced_power_runs: list[int] = field(factory=list, doc="runs flagged `forced_power`")
    energy_withheld_runs: list[int] = field(factory=list, doc="runs flagged `energy_withheld`")
    energy_invalid_runs: list[int] = field(factory=list, doc="runs flagged `energy_invalid`")
    load_unsettled_runs: list[int] = field(factory=list, doc="runs flagged `load_unsettled`")
    thermal_limited_runs: list[int] = field(factory=list, doc="runs flagged `thermal_limited`")
    energy_unavailable_reason: str | None = field(None, doc="the first run's reason its energy is null")
    conversion: ConversionSummary | None = field(None, doc="Core ML: the cell's converted model")
    metrics: dict[str, MetricStats] = field(factory=dict, doc="every per-run metric with a value, by key: "
                                            "`name` a run field, `name[ch]` that field of channel `ch`")


@dataclass
class FigureEntry:
    name: str = field(doc="file stem under figures/")
    title: str = field(doc="as shown in the reports")
    files: list[str] = field(factory=list, doc="relative to the report folder: SVG, then PNG")
    skipped: str | None = field(None, doc="why the figure was left out (null when drawn)")


@dataclass
class Summary:
    """summary.json: the session's header, one entry per cell, and what the report derived."""

    schema_version: int = field(SUMMARY_SCHEMA_VERSION, doc="of summary.json's layout")
    session_id: str | None = field(None, doc="the session folder's name")
    generated_at: str | None = field(None, unit="ISO 8601 UTC", doc="when this summary was written")
    status: str | None = field(None, doc="the session's status")
    model: dict[str, Any] = field(factory=dict, doc="session.json's `model`")
    matrix: dict[str, Any] = field(factory=dict, doc="the matrix's `path` and `sha256`")
    equivalence: dict[str, Any] = field(factory=dict, doc="the reference cell and thresholds")
    energy_unavailable_reason: str | None = field(None, doc="why the session measured no energy")
    meter: str | None = field(None, doc="the meter used")
    n_runs: int = field(0, unit="count", doc="run records read")
    problems: list[str] = field(factory=list, doc="lines that could not be read, and a missing session.json")
    cells: list[CellSummary] = field(factory=list, doc="one per cell, in matrix order (see the cell table)")
    baseline: str | None = field(None, doc="the cell the others are compared with")
    comparisons: list[Comparison] = field(factory=list, doc="each cell against the baseline (see the comparison "
                                                            "table)")
    group_ratios: list[GroupRatio] = field(factory=list, doc="each cell of a `[report] groups` group against each "
                                                             "other group (see the group ratio table)")
    warnings: list[str] = field(factory=list, doc="stability warnings, one line each")
    time_budget: list[TimeBudget] = field(factory=list, doc="where the runs' wall time went: all runs, then each "
                                                            "cell (see the time budget table)")
    hosts: list[str] = field(factory=list, doc="the hosts that ran the runs, when more than one (a merged session, "
                                               "or one resumed on another machine); empty otherwise")
    host_cells: list[HostCell] = field(factory=list, doc="with several hosts: each cell's runs on each host (see the "
                                                         "host cell table)")
    host_spreads: list[HostSpread] = field(factory=list, doc="with several hosts: each cell measured on two or more, "
                                                             "its between-host and within-host spread per metric "
                                                             "(see the host spread table)")
    figures: list[FigureEntry] = field(factory=list, doc="each figure drawn or left out")


def _metric(runs: list[RunRecord], key: str) -> MetricStats | None:
    pairs = run_values(runs, key)
    if not pairs:
        return None
    s = across_runs([v for _, v in pairs])
    return MetricStats(n=s.n, median=s.median, p10=s.p10, p90=s.p90, mad=s.mad, min=s.min, max=s.max,
                       outlier_runs=[RunValue(pairs[i][0], pairs[i][1]) for i in s.outliers])


def _cell_status(counts: Counter) -> str:
    if not counts:
        return "not run"
    if counts["ok"] and not counts["failed"]:
        return "ok"
    if counts["ok"]:
        return "partial"
    if counts["failed"]:
        return "failed"
    return "unsupported"


def _conversion(runs: list[RunRecord]) -> ConversionSummary | None:
    """The cell's converted model as its first run with one recorded it (see coreml_backend)."""
    recorded = [r for r in runs if r.conversion]
    if not recorded:
        return None
    c: dict[str, Any] = recorded[0].conversion or {}
    fields = c.get("key_fields", {})
    return ConversionSummary(
        converter=fields.get("converter"), converter_version=fields.get("converter_version"),
        coremltools=fields.get("coremltools"), torch=fields.get("torch"), key=c.get("key"),
        cache_hit=c.get("cache_hit"), steps=c.get("steps", {}), prepare_s=c.get("prepare_s"),
        verify_s=c.get("verify_s"), package_bytes=c.get("package_bytes"), weight_bytes=c.get("weight_bytes"),
        bits_per_weight=c.get("bits_per_weight"), spec=c.get("spec"),
        # runs whose own worker converted (later runs of an unsupported cell start no worker)
        runs_that_converted=[r.run_index for r in recorded
                             if (r.conversion or {}).get("cache_hit") is False and r.worker_pid is not None],
    )


def _median(m: MetricStats | None) -> float | None:
    return m.median if m else None


def summarize_cell(cell_id: str, runs: list[RunRecord], cell_info: dict[str, Any]) -> CellSummary:
    counts = Counter(r.status for r in runs)
    ok = [r for r in runs if r.status == "ok"]
    channels = sorted({ch for r in ok for ch in r.energy_by_channel})
    keys = [*RUN_METRICS, *(f"{k}[{ch}]" for ch in channels for k in CHANNEL_METRICS)]
    metrics = {k: m for k in keys if (m := _metric(ok, k)) is not None}
    lat, energy = metrics.get("latency_ms_median"), metrics.get("energy_per_step_j")
    image = metrics.get("estimated_energy_per_50_step_image_j")
    first = ok[0] if ok else (runs[0] if runs else None)
    checked = [r for r in ok if r.numerically_divergent is not None]
    flags: dict[str, Any] = {f.field: flagged(ok, f) for f in FLAGS if f.of_run is not None}
    return CellSummary(
        cell_id=cell_id,
        **cell_info,
        status=_cell_status(counts),
        n_runs=len(runs), n_ok=counts["ok"], n_failed=counts["failed"], n_unsupported=counts["unsupported"],
        unsupported_reason=next((r.failure_reason for r in runs if r.status == "unsupported"), None),
        failures=[Failure(r.run_index, r.failure_reason) for r in runs if r.status == "failed"],
        realized=first.realized if first else {},
        versions=first.versions if first else {},
        latency_ms_median=_median(lat),
        latency_ms_p10=lat.p10 if lat else None,
        latency_ms_p90=lat.p90 if lat else None,
        latency_ms_mad=lat.mad if lat else None,
        latency_ms_iqr=_median(metrics.get("latency_ms_iqr")),
        outlier_runs=lat.outlier_runs if lat else [],
        cosine_min=min((r.cosine for r in checked if r.cosine is not None), default=None),
        mse_max=max((r.mse for r in checked if r.mse is not None), default=None),
        numerically_divergent=bool(flags["divergent_runs"]) if checked else None,
        output_sha256_distinct=len({r.output_sha256 for r in ok if r.output_sha256}),
        energy_per_step_j=_median(energy),
        energy_per_step_j_p10=energy.p10 if energy else None,
        energy_per_step_j_p90=energy.p90 if energy else None,
        energy_outlier_runs=energy.outlier_runs if energy else [],
        gross_energy_per_step_j=_median(metrics.get("gross_energy_per_step_j")),
        estimated_energy_per_50_step_image_j=_median(image),
        estimated_energy_per_50_step_image_j_p10=image.p10 if image else None,
        estimated_energy_per_50_step_image_j_p90=image.p90 if image else None,
        channels=channels,
        energy_unavailable_reason=next((r.energy_unavailable_reason for r in runs if r.energy_unavailable_reason), None),
        conversion=_conversion(runs),
        metrics=metrics,
        **flags,
    )


CELL_INFO = ("label", "backend", "env", "device", "compute_unit", "precision", "attention", "resolution", "notes",
             "options")


def _cell_info(session: SessionRecord) -> dict[str, dict[str, Any]]:
    """Cell descriptions as the session resolved them (so report order follows the matrix)."""
    return {c["id"]: {k: c.get(k) for k in CELL_INFO} for c in session.cells}


def build_summary(session: SessionRecord | None, session_id: str, runs: list[RunRecord], problems: list[str]) -> Summary:
    """`session` None: session.json is missing; the cells are described by their runs alone."""
    info = _cell_info(session) if session else {}
    by_cell: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_cell.setdefault(r.cell_id, []).append(r)
    planned = [c["id"] for c in session.cells if c.get("enabled", True)] if session else []
    order = [c for c in info if c in by_cell or c in planned] + [c for c in by_cell if c not in info]
    cells = [summarize_cell(c, sorted(by_cell.get(c, []), key=lambda r: r.run_index), info.get(c, {})) for c in order]
    summary = Summary(session_id=session_id, generated_at=utc_now(), matrix={"path": None, "sha256": None},
                      n_runs=len(runs), problems=problems, cells=cells, time_budget=time_budgets(session, order, runs))
    if len(hosts := hosts_of(session, runs)) > 1:
        summary.hosts, summary.host_cells = hosts, host_cells(session, runs, order)
        summary.host_spreads = host_spreads(session, runs, order)
    if session is None:
        return summary
    return replace(
        summary,
        session_id=session.session_id,
        status=session.status,
        model=session.model,
        matrix={k: session.matrix.get(k) for k in ("path", "sha256")},
        equivalence=session.equivalence,
        energy_unavailable_reason=session.power.get("energy_unavailable_reason"),
        meter=session.power.get("meter_used"),
    )
