"""Shared test helpers: the real CLI in subprocesses, and the real worker envs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
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
def env_python() -> Callable[[str], Path]:
    """A worker env by name, synced through the CLI exactly as the README says (once per test
    session); its interpreter."""
    synced: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in synced:
            p = cli("envs", "sync", name, timeout=1800)
            assert p.returncode == 0, p.stderr
            python = REPO / "envs" / name / ".venv" / "bin" / "python"
            assert python.exists()
            synced[name] = python
        return synced[name]

    return get


@pytest.fixture(scope="session")
def diffusers_python(env_python) -> Path:
    return env_python("diffusers")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache of its own, so synthetic weights and references are made from scratch here."""
    return tmp_path_factory.mktemp("cache")
