"""report.md: what a person reads after a session. Derived from summary.json and session.json."""

from __future__ import annotations

from typing import Any


def fmt(value: float | None, spec: str = ".4g") -> str:
    return "–" if value is None else format(value, spec)


def latency_cell(c: dict[str, Any]) -> str:
    if c["latency_ms_median"] is None:
        return "–"
    return f"{c['latency_ms_median']:.2f} [{c['latency_ms_p10']:.2f}–{c['latency_ms_p90']:.2f}]"


def energy_cell(c: dict[str, Any]) -> str:
    if c.get("energy_per_step_j") is None:
        return "–"
    return f"{c['energy_per_step_j']:.4g} [{c['energy_per_step_j_p10']:.4g}–{c['energy_per_step_j_p90']:.4g}]"


def image_estimate_cell(c: dict[str, Any]) -> str:
    return fmt(c.get("estimated_energy_per_50_step_image_j"))


def divergence_cell(c: dict[str, Any]) -> str:
    if c["numerically_divergent"] is None:
        return "not checked"
    return f"DIVERGENT (runs {', '.join(map(str, c['divergent_runs']))})" if c["numerically_divergent"] else "ok"


def flags(c: dict[str, Any]) -> str:
    out = []
    if c["outlier_runs"]:
        out.append("outlier runs: " + ", ".join(f"run {o['run_index']} ({o['value']:.2f} ms)" for o in c["outlier_runs"]))
    if c.get("energy_outlier_runs"):
        out.append("energy outlier runs: " + ", ".join(f"run {o['run_index']} ({o['value']:.4g} J)" for o in c["energy_outlier_runs"]))
    if c.get("throttled_runs"):
        out.append("throttled: runs " + ", ".join(map(str, c["throttled_runs"])))
    if c.get("short_window_runs"):
        out.append("window < 10 meter updates: runs " + ", ".join(map(str, c["short_window_runs"])))
    if c["n_ok"] and c["output_sha256_distinct"] > 1:
        out.append(f"{c['output_sha256_distinct']} distinct outputs across runs")
    if c["n_ok"] and c["n_ok"] < 3:
        out.append(f"only {c['n_ok']} ok run(s)")
    return "; ".join(out)


def describe_cell(c: dict[str, Any]) -> str:
    where = c.get("device") or c.get("compute_unit") or "?"
    return f"{c.get('backend', '?')} {where} {c.get('precision', '?')}"


def conversion_lines(cells: list[dict[str, Any]]) -> list[str]:
    """Core ML conversions: what converted each cell's model and what each step took. A cache
    hit took no conversion step: its step times are those recorded when it was converted."""
    rows = [c for c in cells if c.get("conversion")]
    if not rows:
        return []
    lines = ["", "## Core ML conversions", "",
             "Conversion runs in the worker's load, before any timed window. Step times of a cache hit are those of",
             "the session that converted it; `prepare s` is this session's time to get the model (cache lookup, or",
             "conversion), `verify s` its time to check the model's spec.",
             "",
             "| cell | converter | coremltools / torch | this session | trace s | convert s | palettize s | compile s | prepare s | verify s | package MB | bits/weight |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        v = c["conversion"]
        st = v["steps"]
        how = "cache hit" if v["cache_hit"] else f"converted (runs {', '.join(map(str, v['runs_that_converted']))})"
        lines.append(
            f"| {c['cell_id']} | {v['converter']} {v['converter_version']} | {v['coremltools']} / {v['torch']} | {how} | "
            f"{fmt(st.get('trace_s'), '.1f')} | {fmt(st.get('convert_s'), '.1f')} | {fmt(st.get('palettize_s'), '.1f')} | "
            f"{fmt(st.get('compile_s'), '.1f')} | {fmt(v['prepare_s'], '.3g')} | {fmt(v['verify_s'], '.3g')} | "
            f"{fmt(v['package_bytes'] / 1e6 if v['package_bytes'] is not None else None, '.2f')} | {fmt(v['bits_per_weight'], '.2f')} |")
    return lines


def render_markdown(summary: dict[str, Any], session: dict[str, Any]) -> str:
    model = summary.get("model", {})
    eq = summary.get("equivalence", {})
    prov = session.get("provenance", {})
    host = prov.get("host", {})
    harness = prov.get("harness", {})
    synthetic = "synthetic weights (right compute, not real images)" if model.get("synthetic") else "checkpoint"
    lines = [
        f"# Session {summary['session_id']}",
        "",
        f"- Status: {summary.get('status')}; {summary['n_runs']} runs recorded",
        f"- Model: {model.get('preset')} — {synthetic}; sha256 `{model.get('sha256')}`",
        f"- Host: {host.get('cpu')} · {host.get('os')} · GPUs: {', '.join(host.get('gpus') or []) or 'none'}",
        f"- Equivalence reference: fp32; divergent when MSE > {eq.get('mse_max')} or cosine < {eq.get('cosine_min')}",
        f"- Energy: {summary.get('energy_unavailable_reason') or 'measured by ' + str(summary.get('meter'))}",
        "",
        "Latency and energy are per UNet step: per run, the median over its iterations (latency) or the",
        "baseline-subtracted energy of its timed window divided by its iterations; then the median and",
        "p10–p90 across runs. Energy per image is an estimate: 50 x the energy per step.",
        "",
        "| cell | backend device precision | runs ok/failed | latency ms median [p10–p90] | IQR ms | energy J/step median [p10–p90] | est. J/image (50x) | cosine (min) | MSE (max) | divergence | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        if c["status"] == "unsupported":
            lines.append(f"| {c['cell_id']} | {describe_cell(c)} | unsupported | – | – | – | – | – | – | – | {c['unsupported_reason']} |")
            continue
        lines.append(
            f"| {c['cell_id']} | {describe_cell(c)} | {c['n_ok']}/{c['n_failed']} | {latency_cell(c)} | "
            f"{fmt(c['latency_ms_iqr'])} | {energy_cell(c)} | {image_estimate_cell(c)} | {fmt(c['cosine_min'], '.7f')} | "
            f"{fmt(c['mse_max'])} | {divergence_cell(c)} | {flags(c)} |"
        )
    lines += conversion_lines(summary["cells"])
    failures = [(c["cell_id"], f) for c in summary["cells"] for f in c["failures"]]
    if failures:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {cid} run {f['run_index']}: {f['reason']}" for cid, f in failures]
    if summary.get("problems"):
        lines += ["", "## Problems reading the results", ""] + [f"- {p}" for p in summary["problems"]]
    lines += [
        "", "## Reproduce", "",
        f"- Command: `{' '.join(prov.get('command_line', []))}` (in `{prov.get('cwd')}`)",
        f"- Harness commit: `{harness.get('git_commit')}`{' (dirty)' if harness.get('git_dirty') else ''}",
        f"- Matrix: `{summary['matrix'].get('path')}` sha256 `{summary['matrix'].get('sha256')}`",
        f"- Run order: {session.get('order')}, seed {session.get('order_seed')}",
    ]
    for name, env in prov.get("envs", {}).items():
        versions = ", ".join(f"{k} {v}" for k, v in sorted((session.get("worker_versions", {}).get(name) or env.get("locked_versions") or {}).items()))
        lines.append(f"- Env `{name}`: lock sha256 `{env.get('lock_sha256')}`; {versions}")
    for res, inp in session.get("inputs", {}).items():
        lines.append(f"- Inputs {res}x{res}: latent `{inp['sha256']['latent']}`, text embedding `{inp['sha256']['text_embedding']}`, timestep {inp['timestep']}")
    return "\n".join(lines) + "\n"
