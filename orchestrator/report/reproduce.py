"""The Reproduce panel: everything needed to run a session again and to tell whether another
session is comparable, gathered from session.json and the runs (which carry each worker's Python)."""

from __future__ import annotations

from typing import Any

UNKNOWN = "not recorded"


def _or_unknown(value: Any) -> str:
    return UNKNOWN if value in (None, "", [], {}) else str(value)


def _versions(v: dict[str, str]) -> str:
    return ", ".join(f"{k} {val}" for k, val in sorted(v.items())) or UNKNOWN


def _memory(n: Any) -> str:
    return f"{n / 2**30:.0f} GiB RAM" if isinstance(n, (int, float)) else "RAM not recorded"


def panel(session: dict[str, Any], runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, text) lines in reading order."""
    prov = session.get("provenance", {})
    harness, host, power = prov.get("harness", {}), prov.get("host", {}), session.get("power", {})
    model, matrix = session.get("model", {}), session.get("matrix", {})
    items = [("Command", f"{' '.join(prov.get('command_line') or []) or UNKNOWN} (in {_or_unknown(prov.get('cwd'))})")]
    dirty = {True: " (dirty: uncommitted changes)", False: " (clean)"}.get(harness.get("git_dirty"), "")
    items.append(("Harness", f"commit {_or_unknown(harness.get('git_commit'))}{dirty}, version {_or_unknown(harness.get('version'))}"))
    items.append(("Matrix", f"{_or_unknown(matrix.get('path'))}, sha256 {_or_unknown(matrix.get('sha256'))}"))
    pythons: dict[str, set[str]] = {}
    for r in runs:
        if r.get("env") and r.get("python"):
            pythons.setdefault(r["env"], set()).add(r["python"])
    for name, env in prov.get("envs", {}).items():
        versions = (session.get("worker_versions") or {}).get(name) or env.get("locked_versions") or {}
        lock = env.get("lock_sha256") or ("none (an existing interpreter)" if env.get("external_interpreter") else UNKNOWN)
        py = ", ".join(sorted(pythons.get(name, ()))) or UNKNOWN
        items.append((f"Env {name}", f"lock sha256 {lock}; Python {py} ({_or_unknown(env.get('python'))}); {_versions(versions)}"))
    items.append(("Orchestrator Python", _or_unknown(host.get("orchestrator_python"))))
    gpus = ", ".join(host.get("gpus") or []) or "none"
    items.append(("OS and hardware", f"{_or_unknown(host.get('os'))}; {_or_unknown(host.get('cpu'))} "
                                     f"({_or_unknown(host.get('cpu_count_logical'))} logical CPUs, {_memory(host.get('memory_bytes'))}); GPUs: {gpus}"))
    meter_versions = "; ".join((power.get("meter_versions") or {}).values())
    if power.get("meter_used"):
        items.append(("Meter", f"{power['meter_used']}" + (f" ({meter_versions})" if meter_versions else "")))
    else:
        items.append(("Meter", f"none: {_or_unknown(power.get('energy_unavailable_reason'))}"))
    kind = "synthetic (harness-generated weights: right compute, not real images)" if model.get("synthetic") \
        else f"checkpoint {_or_unknown(model.get('path'))}"
    items.append(("Model", f"{kind}; preset {_or_unknown(model.get('preset'))}; sha256 {_or_unknown(model.get('sha256'))}"))
    for res, inp in (session.get("inputs") or {}).items():
        sha = inp.get("sha256", {})
        items.append((f"Inputs {res}x{res}", f"latent {_or_unknown(sha.get('latent'))}, text embedding "
                                             f"{_or_unknown(sha.get('text_embedding'))}; seed {_or_unknown(inp.get('seed'))}, timestep {_or_unknown(inp.get('timestep'))}"))
    items.append(("Run order", f"{_or_unknown(session.get('order'))}, seed {_or_unknown(session.get('order_seed'))}"))
    items.append(("Date", f"{_or_unknown(session.get('started_at'))} to {_or_unknown(session.get('finished_at'))} (UTC)"))
    return items
