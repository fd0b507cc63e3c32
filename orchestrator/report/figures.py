"""Report figures (matplotlib, Agg), each saved as SVG and PNG. Every function returns a Figure
holding the data it drew (points, error bars, medians, outliers, thresholds), so tests check the
picture's content and not only that a file exists; a figure whose metric is missing is not drawn
and says why."""

from __future__ import annotations

import importlib.util
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.report.reasons import again
from orchestrator.results.hosts import run_host
from orchestrator.results.records import RunRecord, SessionRecord
from orchestrator.results.summary import Summary
from orchestrator.results.values import run_values

IMAGE_NOTE = "estimated: 50 x energy per step"


def _pyplot() -> Any:
    """matplotlib with the Agg backend, loaded on first use (the orchestrator can run in an
    interpreter without it, e.g. a cluster's Python given with --env; reports then say so)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "coreml-diffusion-benchmarks"  # same data, same SVG
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Figure:
    name: str  # file stem under figures/
    title: str
    data: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why it was left out
    note: str | None = None  # what a reader must know to read it, shown under it
    files: list[str] = field(default_factory=list)  # relative to the report folder: SVG first, then PNG


def _save(fig: Any, fig_data: Figure, out_dir: Path) -> Figure:
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("svg", "png"):
        fig.savefig(out_dir / f"{fig_data.name}.{ext}", dpi=120, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        fig_data.files.append(f"{out_dir.name}/{fig_data.name}.{ext}")
    plt.close(fig)
    return fig_data


def _ok_runs(runs: list[RunRecord], cell_id: str) -> list[RunRecord]:
    return sorted((r for r in runs if r.cell_id == cell_id and r.status == "ok"), key=lambda r: r.run_index)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def latency_vs_energy(summary: Summary, out_dir: Path) -> Figure:
    """One point per cell: median latency per step (x) and median estimated energy per image (y),
    p10-p90 error bars on both axes."""
    f = Figure("latency_vs_energy", "Latency vs energy per image (estimated, 50 x step)")
    points: list[dict[str, Any]] = []
    for c in summary.cells:
        m = c.metrics.get("estimated_energy_per_50_step_image_j")
        if m is None or c.latency_ms_median is None:
            continue
        points.append({"cell_id": c.cell_id, "x": c.latency_ms_median, "x_p10": c.latency_ms_p10,
                       "x_p90": c.latency_ms_p90, "y": m.median, "y_p10": m.p10, "y_p90": m.p90})
    if not points:
        f.skipped = f"no cell has energy ({again(summary.energy_unavailable_reason or 'no energy in any ok run')})"
        return f
    f.data = {"points": points, "x_label": "latency per UNet step, ms (median, p10-p90)",
              "y_label": f"energy per 50-step image, J\n({IMAGE_NOTE}; median, p10-p90)"}
    fig, ax = _pyplot().subplots(figsize=(9, 5))
    # Cells are named in a legend, not beside their points: cells of one backend sit close
    # together (the reference study's Neural Engine cells), and labels there overlap.
    for i, p in enumerate(points):
        ax.errorbar(p["x"], p["y"], xerr=[[p["x"] - p["x_p10"]], [p["x_p90"] - p["x"]]],
                    yerr=[[p["y"] - p["y_p10"]], [p["y_p90"] - p["y"]]], fmt=MARKERS[i % len(MARKERS)],
                    capsize=3, label=p["cell_id"])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xlabel(f.data["x_label"])
    ax.set_ylabel(f.data["y_label"])
    ax.set_title(f.title)
    ax.set_xlim(0, 1.15 * max(p["x_p90"] for p in points))
    ax.set_ylim(0, 1.15 * max(p["y_p90"] for p in points))
    ax.grid(alpha=0.3)
    return _save(fig, f, out_dir)


def runs_per_cell(summary: Summary, runs: list[RunRecord], key: str, label: str, unit: str,
                  out_dir: Path) -> Figure:
    """Each ok run as a dot in run order, one panel per cell, the median dashed, outliers ringed
    and labelled with their value."""
    name = "runs_" + re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")
    f = Figure(name, f"{label} per run")
    panels: list[dict[str, Any]] = []
    for c in summary.cells:
        values = run_values(_ok_runs(runs, c.cell_id), key)
        m = c.metrics.get(key)
        if values and m is not None:
            panels.append({"cell_id": c.cell_id, "runs": values, "median": m.median,
                           "outliers": [(o.run_index, o.value) for o in m.outlier_runs]})
    if not panels:
        f.skipped = f"no ok run has {label.lower()}"
        return f
    f.data = {"panels": panels, "y_label": f"{label}, {unit}"}
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, panels):
        xs, ys = zip(*p["runs"])
        ax.plot(xs, ys, "o", color="tab:blue")
        ax.axhline(p["median"], linestyle="--", color="tab:gray", label=f"median {p['median']:.4g}")
        for x, y in p["outliers"]:
            ax.plot([x], [y], "o", markersize=11, markerfacecolor="none", markeredgecolor="tab:red")
            ax.annotate(f"{y:.4g}", (x, y), textcoords="offset points", xytext=(7, -3), fontsize=8, color="tab:red")
        ax.set_title(p["cell_id"], fontsize=9)
        ax.set_xlabel("run", fontsize=8)
        ax.set_ylabel(f.data["y_label"], fontsize=8)
        ax.set_xticks(xs)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f.title)
    fig.tight_layout()
    return _save(fig, f, out_dir)


def equivalence(summary: Summary, runs: list[RunRecord], out_dir: Path) -> Figure:
    """Each run's cosine and MSE against the fp32 reference, per cell, with the thresholds."""
    f = Figure("equivalence", "Equivalence with the fp32 reference")
    eq = summary.equivalence
    cells: list[dict[str, Any]] = []
    for c in summary.cells:
        ok = _ok_runs(runs, c.cell_id)
        cos, mse = run_values(ok, "cosine"), run_values(ok, "mse")
        if cos or mse:
            cells.append({"cell_id": c.cell_id, "cosine": cos, "mse": mse, "divergent_runs": c.divergent_runs})
    if not cells:
        f.skipped = "no run was compared with a reference"
        return f
    f.data = {"cells": cells, "cosine_min": eq.get("cosine_min"), "mse_max": eq.get("mse_max")}
    positive = [v for c in cells for _, v in c["mse"] if v > 0] + ([f.data["mse_max"]] if f.data["mse_max"] else [])
    floor = min(positive) / 10 if positive else None  # a log axis has no 0: an MSE of 0 is drawn here
    zero = [c["cell_id"] for c in cells if any(v == 0 for _, v in c["mse"])]
    f.data["mse_floor"] = floor
    fig, (ax_cos, ax_mse) = _pyplot().subplots(1, 2, figsize=(max(7, 1.4 * len(cells) + 4), 4))
    for i, drawn in enumerate(cells):  # divergent runs in red
        for ax, key in ((ax_cos, "cosine"), (ax_mse, "mse")):
            for run_index, v in drawn[key]:
                at_floor = key == "mse" and v == 0 and floor is not None
                ax.plot([i], [floor if at_floor else v], "v" if at_floor else "o", alpha=0.7,
                        color="tab:red" if run_index in drawn["divergent_runs"] else "tab:blue")
    for ax, key, title in ((ax_cos, "cosine_min", "cosine (higher is closer)"), (ax_mse, "mse_max", "MSE (lower is closer)")):
        if f.data[key] is not None:
            ax.axhline(f.data[key], linestyle="--", color="tab:red", label=f"threshold {f.data[key]:g}")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([c["cell_id"] for c in cells], rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    if floor is not None:
        ax_mse.set_yscale("log")
        ax_mse.set_ylim(bottom=floor / 2)
    if zero and floor is not None:
        ax_mse.axhline(floor, color="grey", linewidth=0.8, linestyle=":")
        ax_mse.annotate("MSE = 0 (identical output) drawn here", (0, floor), textcoords="offset points",
                        xytext=(0, 4), fontsize=7, color="grey")
        f.note = (f"Runs of {', '.join(zero)} have an MSE of exactly 0 (output identical to the reference): the log "
                  f"scale has no 0, so they are drawn as ▼ at the panel's floor ({floor:.3g}).")
    fig.suptitle(f.title)
    fig.tight_layout()
    return _save(fig, f, out_dir)


def runs_by_host(summary: Summary, runs: list[RunRecord], session: SessionRecord | None, key: str, label: str,
                 unit: str, out_dir: Path) -> Figure:
    """Each ok run as a dot over its host, one panel per cell, each host's median a bar: the
    between-host spread of a fleet session next to the run-to-run one."""
    name = "hosts_" + re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")
    f = Figure(name, f"{label} per run, by host")
    panels: list[dict[str, Any]] = []
    for c in summary.cells:
        ok = _ok_runs(runs, c.cell_id)
        by_host = {h: [v for _, v in run_values([r for r in ok if run_host(r, session) == h], key)] for h in summary.hosts}
        if any(by_host.values()):
            panels.append({"cell_id": c.cell_id, "hosts": [{"host": h, "values": v} for h, v in by_host.items()]})
    if not panels:
        f.skipped = f"no ok run has {label.lower()}"
        return f
    f.data = {"panels": panels, "y_label": f"{label}, {unit}", "hosts": summary.hosts}
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(max(3.2, 0.9 * len(summary.hosts)) * cols, 3.0 * rows),
                                   squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, panels):
        for x, h in enumerate(p["hosts"]):
            values = h["values"]
            if not values:
                continue
            offsets = [(i - (len(values) - 1) / 2) * 0.25 / max(1, len(values) - 1) for i in range(len(values))]
            ax.plot([x + o for o in offsets], values, "o", color="tab:blue", alpha=0.8)
            ax.plot([x - 0.25, x + 0.25], [statistics.median(values)] * 2, "-", color="tab:gray")
        ax.set_title(p["cell_id"], fontsize=9)
        ax.set_xticks(range(len(p["hosts"])), [h["host"] for h in p["hosts"]], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f.data["y_label"], fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f.title)
    fig.tight_layout()
    return _save(fig, f, out_dir)


def energy_metrics(summary: Summary) -> list[tuple[str, str, str]]:
    """(key, label, unit) of energy per step drawn run by run: each channel, then the total; the
    run-level total alone when the runs carry no channels."""
    channels = sorted({ch for c in summary.cells for ch in c.channels}, key=lambda ch: (ch == "total", ch))
    if channels:
        return [(f"energy_per_step_j[{ch}]", f"Energy per step, {ch}", "J") for ch in channels]
    if any(c.energy_per_step_j is not None for c in summary.cells):
        return [("energy_per_step_j", "Energy per step, total", "J")]
    return []


def all_figures(summary: Summary, runs: list[RunRecord], session: SessionRecord | None, out_dir: Path) -> list[Figure]:
    if importlib.util.find_spec("matplotlib") is None:
        return [Figure("figures", "Figures", skipped="matplotlib is not installed in this interpreter (uv sync installs it)")]
    figs = [latency_vs_energy(summary, out_dir),
            runs_per_cell(summary, runs, "latency_ms_median", "Latency per step (run median)", "ms", out_dir)]
    energy = energy_metrics(summary)
    figs += [runs_per_cell(summary, runs, *m, out_dir) for m in energy] or [
        Figure("runs_energy", "Energy per step per run",
               skipped=f"no energy ({again(summary.energy_unavailable_reason or 'no energy in any ok run')})")]
    if summary.hosts:
        figs += [runs_by_host(summary, runs, session, key, label, unit, out_dir)
                 for key, label, unit in (("latency_ms_median", "Latency per step (run median)", "ms"),
                                          ("energy_per_step_j", "Energy per step, total", "J"))
                 if any(run_values(runs, key))]
    figs.append(equivalence(summary, runs, out_dir))
    return figs
