"""`orchestrate doctor`: what this host can measure, and why not where it cannot."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from orchestrator.config.envs import discover
from orchestrator.config.matrix import default_power
from orchestrator.energy import meters
from orchestrator.energy.meters import broker
from orchestrator.energy.preflight import checks, load
from orchestrator.results import provenance
from workers.contract.backends import BACKENDS

DEFAULT_POWER = default_power()
PROBE_TIMEOUT_S = 120


def probe_env(env, backend: str) -> dict[str, Any]:
    """Ask the env's own interpreter what its toolchain sees (the orchestrator imports none)."""
    try:
        p = subprocess.run([str(env.python), "-m", "workers", "--probe", backend], capture_output=True, text=True,
                           timeout=PROBE_TIMEOUT_S, env=env.worker_environ())
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def env_report(env, name: str, backend: str) -> dict[str, Any]:
    if env is None:
        return {"env": name, "synced": False, "detail": f"env not synced: run `orchestrate envs sync {name}`"}
    if not env.synced:
        return {"env": name, "synced": False, "detail": env.unready_reason}
    return {"env": name, "synced": True, **probe_env(env, backend)}


def node_broker() -> dict[str, Any]:
    """Whether this machine's meter broker (`sudo orchestrate broker`) answers where this
    user's sessions and Ray actors look for it, and whether it sees powermetrics."""
    path = broker.socket_path()
    node = broker.connect(path)
    if node is None:
        return {"socket": path, "answers": False}
    node.close()
    return {"socket": path, "answers": True, "pid": node.pid, "powermetrics": node.powermetrics}


def diagnose() -> dict[str, Any]:
    host = provenance.host()
    pmset = checks.pmset_executable(None)
    power = checks.power_state(pmset)
    available = {spec.name: spec.available(DEFAULT_POWER) for spec in meters.REGISTRY}
    throttle = next((spec.throttle_reasons for spec in meters.REGISTRY
                     if spec.throttle_reasons is not None and available[spec.name].ok), None)
    report: dict[str, Any] = {
        "host": host,
        "preflight": {
            "load_average": list(load.load_average() or []) or None,
            "power": {**power.facts, "problems": power.problems},
            "thermal": checks.thermal_state(pmset),
            "gpu_throttle": throttle(0) if throttle is not None else None,
        },
        "meters": {name: {"available": a.ok, "detail": a.reason} for name, a in available.items()},
        "meter_broker": node_broker(),
        "auto_meter": next((spec.name for spec in meters.REGISTRY if spec.auto and available[spec.name].ok), None),
        "backends": {},
    }
    envs = discover()
    for backend, spec in BACKENDS.items():
        names = spec.env_names(set(envs)) or [backend]
        found = {n: env_report(envs.get(n), n, backend) for n in names}
        report["backends"][backend] = found[backend] if names == [backend] else {"envs": found}
    return report
