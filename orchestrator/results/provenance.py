"""Where a session's numbers came from: harness commit, host, envs, command line."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from orchestrator.config.envs import Env
from orchestrator.config.paths import REPO_ROOT
from workers.contract.hostinfo import cpu_name


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def harness() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("coreml-diffusion-benchmarks")
    except PackageNotFoundError:
        v = None
    commit = _run(["git", "rev-parse", "HEAD"], REPO_ROOT)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], REPO_ROOT)
    return {"version": v, "git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def gpus() -> list[str]:
    """Model, driver and UUID of each NVIDIA GPU: the UUID tells two machines of one model apart
    (a resumed session may continue on another)."""
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=name,driver_version,uuid", "--format=csv,noheader"])
        return [ln.strip() for ln in out.splitlines()] if out else []
    return []


def host() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "gpus": gpus(),
        "orchestrator_python": platform.python_version(),
    }


def _program() -> str:
    """How the orchestrator was started: `orchestrate` or `python -m orchestrator`."""
    name = Path(sys.argv[0]).name
    return "python -m orchestrator" if name == "__main__.py" else name


def env_record(env: Env) -> dict[str, Any]:
    return {
        "python": str(env.python),
        "external_interpreter": env.external_python is not None,
        "lock_sha256": env.lock_sha256() if env.external_python is None else None,
        "locked_versions": env.locked_versions() if env.external_python is None else {},  # for the env's Python
        "installed_versions": env.installed_versions(),
    }


def collect(envs: list[Env]) -> dict[str, Any]:
    return {
        "harness": harness(),
        "host": host(),
        "envs": {e.name: env_record(e) for e in envs},
        "command_line": [_program(), *sys.argv[1:]],
        "cwd": os.getcwd(),
    }
