"""`orchestrate selftest`: what works on this host, checked in a few minutes, before a study.

One short session of the synthetic `tiny` UNet (synthetic weights) runs a cell for every backend
and device the registry knows, and for Core ML each compute unit, one fresh worker each, through
the real session code: every output is compared with the fp32 reference, cells the host lacks
are recorded `unsupported` by their workers with the reason, and the meter (`auto`) measures an
idle and a loaded window around each run. The checks are read from those run records, beside
`orchestrate doctor`'s probes, and written as one JSON file made to be attached to a bug report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import envs as envs_mod
from orchestrator.config.matrix import load_matrix
from orchestrator.config.privileges import invoking_user
from orchestrator.console import Display
from orchestrator.doctor import diagnose
from orchestrator.energy.preflight import checks as preflight_checks
from orchestrator.report.tables import Table
from orchestrator.results import provenance
from orchestrator.results.records import RunRecord
from orchestrator.results.store import utc_now, write_json
from orchestrator.run.session import Session

SELFTEST_VERSION = 1
RESOLUTION = 64

# (id, backend, placement key and value, precision, attention or None): every device of each backend;
# Core ML in its default env (coreml-ct9) with the study's own converter
CELLS: tuple[tuple[str, str, str, str, str, str | None], ...] = (
    ("diffusers-cpu-fp32", "diffusers", "device", "cpu", "fp32", None),
    ("diffusers-mps-fp16", "diffusers", "device", "mps", "fp16", None),
    ("diffusers-cuda-fp16", "diffusers", "device", "cuda", "fp16", None),
    ("mlx-cpu-fp32", "mlx", "device", "cpu", "fp32", None),
    ("mlx-gpu-fp16", "mlx", "device", "gpu", "fp16", None),
    ("coreml-cpu-fp16", "coreml", "compute_unit", "CPU_ONLY", "fp16", "original"),
    ("coreml-gpu-fp16", "coreml", "compute_unit", "CPU_AND_GPU", "fp16", "original"),
    ("coreml-ane-fp16", "coreml", "compute_unit", "CPU_AND_NE", "fp16", "split_einsum_v2"),
)
# the meter channel a loaded window must raise, by placement (where the meter has that channel)
RISES = {"CPU_ONLY": "cpu", "cpu": "cpu", "CPU_AND_GPU": "gpu", "mps": "gpu", "gpu": "gpu", "CPU_AND_NE": "ane"}

MATRIX_HEAD = """# Written by `orchestrate selftest`: the synthetic `tiny` UNet (synthetic weights) on every backend.
[model]
source = "synthetic"
preset = "tiny"
seed = 0
sha256 = "3e35badb1a7d322f44352cd6cf1b21a25ebb2a91e0c08a0c2a059b34c7c095fb"

[inputs]
seed = 0
batch = 2
timestep = 500

[inputs.sha256]
"64" = { latent = "44d0f3786e9dad8f63d582b42dd794f1b22f1c0aa53d87bade0fbc20ad4c2e12", text_embedding = "3c4de1f873c6bdf3c6d8f646180e58014e05e2f722daa94b5549b11d8d5a3df5" }

[timing]
warmup = 1
iterations = 3
runs = 1
cooldown_s = 1
order = "sequential"
run_timeout_s = 600

[power]
meter = "auto"

[preflight]
load_margin = 1.0
load_settle_max_s = 5

[equivalence]
reference = { backend = "diffusers", env = "diffusers", device = "cpu", precision = "fp32" }
mse_max = 1e-3
cosine_min = 0.999
"""


def matrix_text() -> str:
    cells = []
    for cid, backend, key, value, precision, attention in CELLS:
        lines = ["[[cells]]", f'id = "{cid}"', f'backend = "{backend}"', f'{key} = "{value}"',
                 f'precision = "{precision}"', f"resolution = {RESOLUTION}"]
        if attention:
            lines += [f'attention = "{attention}"', 'converter = "coreml-diffusion"']
        cells.append("\n".join(lines))
    return MATRIX_HEAD + "\n" + "\n\n".join(cells) + "\n"


@dataclass
class Check:
    name: str
    status: str  # pass | fail | unsupported | unavailable
    detail: str
    figures: dict[str, Any]


def _placement(cid: str) -> str:
    return next(value for c, _, _, value, _, _ in CELLS if c == cid)


def backend_check(rec: RunRecord) -> Check:
    """A cell's run: ok and equivalent to the reference, unsupported (why; for Core ML, whether
    it converted), or failed (how)."""
    name = f"backend {rec.cell_id}"
    figures: dict[str, Any] = {"latency_ms_median": rec.latency_ms_median, "cosine": rec.cosine, "mse": rec.mse,
                               "worker_uid": rec.worker_uid, "realized": rec.realized, "versions": rec.versions}
    if rec.conversion:
        c = rec.conversion
        figures["conversion"] = {k: c.get(k) for k in ("key", "cache_hit", "package_bytes", "bits_per_weight", "steps",
                                                       "spec", "key_fields")}
    if rec.status == "unsupported":
        return Check(name, "unsupported", str(rec.failure_reason), figures)
    if rec.status != "ok":
        return Check(name, "fail", str(rec.failure_reason), figures)
    if rec.cosine is None:
        return Check(name, "fail", f"ran, but not compared with the reference: {rec.equivalence_unavailable_reason}",
                     figures)
    if rec.numerically_divergent:
        return Check(name, "fail", f"diverges from the fp32 reference: cosine {rec.cosine!r}, MSE {rec.mse!r}", figures)
    return Check(name, "pass", f"{rec.latency_ms_median!r} ms/step; cosine {rec.cosine!r}, MSE {rec.mse!r} "
                               "against the fp32 reference", figures)


def _rise(rec: RunRecord, channel: str) -> float | None:
    ch = rec.energy_by_channel.get(channel) or {}
    active, base = ch.get("active_w"), ch.get("baseline_w")
    return None if active is None or base is None else active - base


def meter_checks(records: list[RunRecord], meter: str | None, reason: str) -> list[Check]:
    """The loaded window raises the total and the cell's own channel; the Neural Engine's power
    rises on CPU_AND_NE and stays (under half that rise) on CPU_ONLY."""
    if meter is None:
        return [Check("meter", "unavailable", f"no meter: {reason}", {})]
    out = []
    ok = {r.cell_id: r for r in records if r.status == "ok"}
    for r in ok.values():
        if r.energy_unavailable_reason:
            out.append(Check(f"meter {meter} on {r.cell_id}", "fail", r.energy_unavailable_reason, {}))
            continue
        figures = {ch: {"baseline_w": v.get("baseline_w"), "active_w": v.get("active_w")}
                   for ch, v in r.energy_by_channel.items()}
        channels = ["total"] + ([c] if (c := RISES.get(_placement(r.cell_id))) in r.energy_by_channel else [])
        flat = [ch for ch in channels if not (_rise(r, ch) or 0) > 0]
        out.append(Check(f"meter {meter} on {r.cell_id}", "fail" if flat else "pass",
                         f"loaded window did not raise {', '.join(flat)}" if flat else
                         f"loaded window raised {', '.join(channels)}", figures))
    ne, cpu_only = ok.get("coreml-ane-fp16"), ok.get("coreml-cpu-fp16")
    if ne and cpu_only and (ne_rise := _rise(ne, "ane")) is not None and (cpu_rise := _rise(cpu_only, "ane")) is not None:
        good = ne_rise > 0 and cpu_rise < ne_rise / 2
        out.append(Check(f"meter {meter}: ane channel", "pass" if good else "fail",
                         f"ane rose {ne_rise!r} W on CPU_AND_NE and {cpu_rise!r} W on CPU_ONLY",
                         {"CPU_AND_NE": ne_rise, "CPU_ONLY": cpu_rise}))
    return out


def preflight_check(doctor: dict[str, Any]) -> Check:
    pre = doctor["preflight"]
    if preflight_checks.pmset_executable(None) is None:
        return Check("preflight", "unavailable", "no pmset here (macOS only): power source from psutil", pre)
    problems = [p for p in pre["power"]["problems"] if "pmset" in p] + (
        [f"pmset -g therm: {pre['thermal']['error']}"] if (pre["thermal"] or {}).get("error") else [])
    return Check("preflight", "fail" if problems else "pass", "; ".join(problems) or "pmset read and parsed", pre)


def uid_check(records: list[RunRecord]) -> Check:
    """Under sudo every worker runs as the invoking user; the uid each worker reported in hello."""
    uids = sorted({r.worker_uid for r in records if r.worker_uid is not None})
    user = invoking_user()
    expected = user.uid if user else (os.getuid() if hasattr(os, "getuid") else None)
    who = f"{user.name} (uid {user.uid}, under sudo)" if user else f"this user (uid {expected}, not under sudo)"
    if not uids:
        return Check("worker uid", "unavailable", "no worker reported its uid", {"expected": expected})
    wrong = [u for u in uids if u != expected]
    return Check("worker uid", "fail" if wrong else "pass",
                 f"workers ran as uid {', '.join(map(str, uids))}; expected {who}", {"uids": uids, "expected": expected})


def run_selftest(out: Path, display: Display, env_overrides: dict[str, Path] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    matrix_path = out / "selftest-matrix.toml"
    matrix_path.write_text(matrix_text())
    envs = envs_mod.discover(env_overrides)
    doctor = diagnose()
    session = Session(load_matrix(matrix_path, set(envs)), envs, display)
    result = session.run(out)
    records = result.dir.read_runs().records
    checks = [backend_check(r) for r in records]
    checks += meter_checks(records, session.meters.name, session.meters.reason)
    checks += [preflight_check(doctor), uid_check(records)]
    report = {
        "selftest_version": SELFTEST_VERSION, "generated_at": utc_now(), "passed": not any(c.status == "fail" for c in checks),
        "host": doctor["host"], "harness": provenance.harness(), "session": str(result.dir.root),
        "worker_versions": session.worker_versions, "doctor": doctor,
        "checks": [c.__dict__ for c in checks],
    }
    path = result.dir.root / "selftest.json"
    write_json(path, report)
    report["path"] = str(path)
    return report


def capability_table(report: dict[str, Any]) -> Table:
    """What works, what is unsupported and why, what failed and how: one row per check."""
    return Table(["check", "status", "detail"], [[c["name"], c["status"], c["detail"]] for c in report["checks"]])
