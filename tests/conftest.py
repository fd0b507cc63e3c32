"""Shared test helpers: the real CLI in subprocesses, and the real diffusers env."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
os.environ["HF_HUB_OFFLINE"] = "1"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 900, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `orchestrate ARGS` as a user would, capturing its output."""
    return subprocess.run([str(BIN / "orchestrate"), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def diffusers_python() -> Path:
    """The diffusers env, synced through the CLI exactly as the README says."""
    p = cli("envs", "sync", "diffusers", timeout=1800)
    assert p.returncode == 0, p.stderr
    python = REPO / "envs" / "diffusers" / ".venv" / "bin" / "python"
    assert python.exists()
    return python


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache of its own, so synthetic weights and references are made from scratch here."""
    return tmp_path_factory.mktemp("cache")


def only_session(out: Path) -> Path:
    """The one session folder a run wrote under `out`."""
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


@pytest.fixture(scope="session")
def quick_session(diffusers_python, cache_dir, tmp_path_factory):
    """examples/quick.toml run once through the CLI, shared by every test that needs a real
    session: (process, session folder, seconds)."""
    out = tmp_path_factory.mktemp("quick")
    t0 = time.monotonic()
    p = cli(str(REPO / "examples" / "quick.toml"), "--out", str(out), env={"CDB_CACHE_DIR": str(cache_dir)})
    return p, only_session(out), time.monotonic() - t0
