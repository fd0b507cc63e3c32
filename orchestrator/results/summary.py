"""Per-cell summary of a session, derived from runs.jsonl alone so it can always be regenerated
(`orchestrate report DIR`). Every numeric per-run metric goes through the same statistics."""

from __future__ import annotations

from collections import Counter
from typing import Any

from orchestrator.energy.arithmetic import STEPS_PER_IMAGE
from orchestrator.results.stats import across_runs
from orchestrator.results.store import SCHEMA_VERSION, utc_now

# Per-run numeric metrics summarised across a cell's ok runs.
RUN_METRICS = (
    "latency_ms_median", "latency_ms_iqr", "latency_ms_min", "load_s", "mse", "mse_relative", "cosine",
    "energy_per_step_j", "gross_energy_per_step_j", "estimated_energy_per_50_step_image_j", "baseline_w", "active_w",
)
CHANNEL_METRICS = ("energy_per_step_j", "gross_energy_per_step_j", "baseline_w", "active_w")


IMAGE_ESTIMATE = "estimated_energy_per_50_step_image_j"


def _value(r: dict[str, Any], key: str) -> Any:
    """`name` is a run field; `name[ch]` is that field of channel ch in energy_by_channel. A record
    with energy per step but no image estimate (written by other tools) gets 50 x the step."""
    if key.endswith("]"):
        name, ch = key[:-1].split("[")
        fields = (r.get("energy_by_channel") or {}).get(ch, {})
    else:
        name, fields = key, r
    if name == IMAGE_ESTIMATE and fields.get(name) is None and isinstance(step := fields.get("energy_per_step_j"), (int, float)):
        return STEPS_PER_IMAGE * step
    return fields.get(name)


def run_values(runs: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(run_index, value) of every run that has a number for `key`, in the order given."""
    return [(r["run_index"], v) for r in runs if isinstance(v := _value(r, key), (int, float)) and not isinstance(v, bool)]


def _metric(runs: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    pairs = run_values(runs, key)
    if not pairs:
        return None
    s = across_runs([v for _, v in pairs])
    return {
        "n": s.n, "median": s.median, "p10": s.p10, "p90": s.p90, "mad": s.mad, "min": s.min, "max": s.max,
        "outlier_runs": [{"run_index": pairs[i][0], "value": pairs[i][1]} for i in s.outliers],
    }


def _cell_status(counts: Counter) -> str:
    if counts["ok"] and not counts["failed"]:
        return "ok"
    if counts["ok"]:
        return "partial"
    if counts["failed"]:
        return "failed"
    return "unsupported"


def _conversion(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell's converted model as its first run with one recorded it (see coreml_backend)."""
    recorded = [r for r in runs if r.get("conversion")]
    if not recorded:
        return None
    c = recorded[0]["conversion"]
    fields = c.get("key_fields", {})
    return {
        "converter": fields.get("converter"), "converter_version": fields.get("converter_version"),
        "coremltools": fields.get("coremltools"), "torch": fields.get("torch"), "key": c.get("key"),
        "cache_hit": c.get("cache_hit"), "steps": c.get("steps", {}), "prepare_s": c.get("prepare_s"),
        "verify_s": c.get("verify_s"), "package_bytes": c.get("package_bytes"), "weight_bytes": c.get("weight_bytes"),
        "bits_per_weight": c.get("bits_per_weight"), "spec": c.get("spec"),
        # runs whose own worker converted (later runs of an unsupported cell start no worker)
        "runs_that_converted": [r["run_index"] for r in recorded
                                if r["conversion"].get("cache_hit") is False and r.get("worker_pid") is not None],
    }


def summarize_cell(cell_id: str, runs: list[dict[str, Any]], cell_info: dict[str, Any]) -> dict[str, Any]:
    counts = Counter(r["status"] for r in runs)
    ok = [r for r in runs if r["status"] == "ok"]
    channels = sorted({ch for r in ok for ch in (r.get("energy_by_channel") or {})})
    keys = [*RUN_METRICS, *(f"{k}[{ch}]" for ch in channels for k in CHANNEL_METRICS)]
    metrics = {k: m for k in keys if (m := _metric(ok, k)) is not None}
    lat = metrics.get("latency_ms_median")
    energy = metrics.get("energy_per_step_j")
    first = ok[0] if ok else (runs[0] if runs else {})
    divergent = [r["run_index"] for r in ok if r.get("numerically_divergent")]
    checked = [r for r in ok if r.get("numerically_divergent") is not None]
    return {
        "cell_id": cell_id,
        **cell_info,
        "status": _cell_status(counts),
        "n_runs": len(runs), "n_ok": counts["ok"], "n_failed": counts["failed"], "n_unsupported": counts["unsupported"],
        "unsupported_reason": next((r.get("failure_reason") for r in runs if r["status"] == "unsupported"), None),
        "failures": [{"run_index": r["run_index"], "reason": r.get("failure_reason")} for r in runs if r["status"] == "failed"],
        "realized": first.get("realized", {}),
        "versions": first.get("versions", {}),
        "latency_ms_median": lat["median"] if lat else None,
        "latency_ms_p10": lat["p10"] if lat else None,
        "latency_ms_p90": lat["p90"] if lat else None,
        "latency_ms_mad": lat["mad"] if lat else None,
        "latency_ms_iqr": metrics["latency_ms_iqr"]["median"] if "latency_ms_iqr" in metrics else None,
        "outlier_runs": lat["outlier_runs"] if lat else [],
        "cosine_min": min((r["cosine"] for r in checked if r.get("cosine") is not None), default=None),
        "mse_max": max((r["mse"] for r in checked if r.get("mse") is not None), default=None),
        "numerically_divergent": bool(divergent) if checked else None,
        "divergent_runs": divergent,
        "output_sha256_distinct": len({r["output_sha256"] for r in ok if r.get("output_sha256")}),
        "energy_per_step_j": energy["median"] if energy else None,
        "energy_per_step_j_p10": energy["p10"] if energy else None,
        "energy_per_step_j_p90": energy["p90"] if energy else None,
        "energy_outlier_runs": energy["outlier_runs"] if energy else [],
        "gross_energy_per_step_j": metrics.get("gross_energy_per_step_j", {}).get("median"),
        "estimated_energy_per_50_step_image_j": metrics.get("estimated_energy_per_50_step_image_j", {}).get("median"),
        "estimated_energy_per_50_step_image_j_p10": metrics.get("estimated_energy_per_50_step_image_j", {}).get("p10"),
        "estimated_energy_per_50_step_image_j_p90": metrics.get("estimated_energy_per_50_step_image_j", {}).get("p90"),
        "channels": channels,
        "throttled_runs": [r["run_index"] for r in ok if r.get("throttled")],
        "short_window_runs": [r["run_index"] for r in ok if r.get("short_window")],
        "forced_power_runs": [r["run_index"] for r in ok if r.get("forced_power")],
        "energy_withheld_runs": [r["run_index"] for r in ok if r.get("power_problems") and not r.get("forced_power")],
        "load_unsettled_runs": [r["run_index"] for r in ok if r.get("load_unsettled")],
        "thermal_limited_runs": [r["run_index"] for r in ok if (r.get("thermal_before_run") or {}).get("limited")
                                 or r.get("gpu_throttle_before_run")],
        "energy_unavailable_reason": next((r.get("energy_unavailable_reason") for r in runs
                                           if r.get("energy_unavailable_reason")), None),
        "conversion": _conversion(runs),
        "metrics": metrics,
    }


def _cell_info(session: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Cell descriptions as the session resolved them (so report order follows the matrix)."""
    keys = ("label", "backend", "env", "device", "compute_unit", "precision", "attention", "resolution", "notes", "options")
    return {c["id"]: {k: c.get(k) for k in keys} for c in session.get("cells", [])}


def build_summary(session: dict[str, Any], runs: list[dict[str, Any]], problems: list[str]) -> dict[str, Any]:
    info = _cell_info(session)
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_cell.setdefault(r["cell_id"], []).append(r)
    order = [c for c in info if c in by_cell] + [c for c in by_cell if c not in info]
    return {
        "schema_version": SCHEMA_VERSION,
        "session_id": session.get("session_id"),
        "generated_at": utc_now(),
        "status": session.get("status"),
        "model": session.get("model", {}),
        "matrix": {k: session.get("matrix", {}).get(k) for k in ("path", "sha256")},
        "equivalence": session.get("equivalence", {}),
        "energy_unavailable_reason": session.get("power", {}).get("energy_unavailable_reason"),
        "meter": session.get("power", {}).get("meter_used"),
        "n_runs": len(runs),
        "problems": problems,
        "cells": [summarize_cell(c, sorted(by_cell[c], key=lambda r: r["run_index"]), info.get(c, {})) for c in order],
    }
