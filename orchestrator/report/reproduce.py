"""The Reproduce panel: everything needed to run a session again and to tell whether another
session is comparable, gathered from session.json and the runs (which carry each worker's Python)."""

from __future__ import annotations

from typing import Any

from orchestrator.report.reasons import again
from orchestrator.results.records import RunRecord, SessionRecord

UNKNOWN = "not recorded"


def _or_unknown(value: Any) -> str:
    return UNKNOWN if value in (None, "", [], {}) else str(value)


def _versions(v: dict[str, str]) -> str:
    return ", ".join(f"{k} {val}" for k, val in sorted(v.items())) or UNKNOWN


def _memory(n: Any) -> str:
    return f"{n / 2**30:.0f} GiB RAM" if isinstance(n, (int, float)) else "RAM not recorded"


def _hardware(host: dict[str, Any]) -> str:
    gpus = ", ".join(host.get("gpus") or []) or "none"
    return (f"{_or_unknown(host.get('os'))}; {_or_unknown(host.get('cpu'))} ({_or_unknown(host.get('cpu_count_logical'))} "
            f"logical CPUs, {_memory(host.get('memory_bytes'))}); GPUs: {gpus}")


def panel(recorded: SessionRecord | None, runs: list[RunRecord]) -> list[tuple[str, str]]:
    """(label, text) lines in reading order; without session.json, its facts read as not recorded."""
    session = recorded or SessionRecord(session_id="")
    prov = session.provenance
    harness, host, power = prov.get("harness", {}), prov.get("host", {}), session.power
    model, matrix = session.model, session.matrix
    items = [("Command", f"{' '.join(prov.get('command_line') or []) or UNKNOWN} (in {_or_unknown(prov.get('cwd'))})")]
    dirty = {True: " (dirty: uncommitted changes)", False: " (clean)"}.get(harness.get("git_dirty"), "")
    items.append(("Harness", f"commit {_or_unknown(harness.get('git_commit'))}{dirty}, version {_or_unknown(harness.get('version'))}"))
    items.append(("Matrix", f"{_or_unknown(matrix.get('path'))}, sha256 {_or_unknown(matrix.get('sha256'))}"))
    pythons: dict[str, set[str]] = {}
    for r in runs:
        if r.env and r.python:
            pythons.setdefault(r.env, set()).add(r.python)
    for name, env in prov.get("envs", {}).items():
        versions = session.worker_versions.get(name) or env.get("locked_versions") or {}
        lock = env.get("lock_sha256") or ("none (an existing interpreter)" if env.get("external_interpreter") else UNKNOWN)
        py = ", ".join(sorted(pythons.get(name, ()))) or UNKNOWN
        items.append((f"Env {name}", f"lock sha256 {lock}; Python {py} ({_or_unknown(env.get('python'))}); {_versions(versions)}"))
    items.append(("Orchestrator Python", _or_unknown(host.get("orchestrator_python"))))
    if not session.hosts:
        items.append(("OS and hardware", _hardware(host)))
    for name, entry in session.hosts.items():  # a merged session: every machine, and the sessions it ran
        seeds = ", ".join(f"{sid} (run order seed {_or_unknown(x.get('order_seed'))})"
                          for sid, x in (entry.get("sessions") or {}).items())
        items.append((f"Host {name}", f"{_hardware(entry.get('host') or {})}; sessions {seeds or UNKNOWN}"))
    if session.merged_from:
        items.append(("Merged from", "; ".join(f"{_or_unknown(m.get('path'))} ({m.get('runs')} runs, "
                                               f"{_or_unknown(m.get('status'))})" for m in session.merged_from)))
    meter_versions = "; ".join((power.get("meter_versions") or {}).values())
    if power.get("meter_used"):
        items.append(("Meter", f"{power['meter_used']}" + (f" ({meter_versions})" if meter_versions else "")))
    else:
        items.append(("Meter", f"none: {again(_or_unknown(power.get('energy_unavailable_reason')))}"))
    kind = "synthetic (harness-generated weights: right compute, not real images)" if model.get("synthetic") \
        else f"checkpoint {_or_unknown(model.get('path'))}"
    items.append(("Model", f"{kind}; preset {_or_unknown(model.get('preset'))}; sha256 {_or_unknown(model.get('sha256'))}"))
    for res, inp in session.inputs.items():
        sha = inp.get("sha256", {})
        items.append((f"Inputs {res}x{res}", f"latent {_or_unknown(sha.get('latent'))}, text embedding "
                                             f"{_or_unknown(sha.get('text_embedding'))}; seed {_or_unknown(inp.get('seed'))}, timestep {_or_unknown(inp.get('timestep'))}"))
    items.append(("Run order", f"{_or_unknown(session.order)}, seed {_or_unknown(session.order_seed)}"))
    items.append(("Date", f"{_or_unknown(session.started_at)} to {_or_unknown(session.finished_at)} (UTC)"))
    return items
