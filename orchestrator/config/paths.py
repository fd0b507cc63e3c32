"""Where the harness keeps things: its checkout, the envs, the cache; `${VAR:-default}` paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVS_DIR = REPO_ROOT / "envs"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: str, base: Path) -> Path:
    """`${VAR}` / `${VAR:-default}` from the environment, then `~`; relative to `base`.
    An unset variable without a default raises KeyError naming it."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is None:
            raise KeyError(name)
        return default

    p = Path(os.path.expanduser(_VAR.sub(sub, value)))
    return p if p.is_absolute() else (base / p)


def cache_dir() -> Path:
    """`CDB_CACHE_DIR`, else the user's cache folder (under sudo, the invoking user's: the
    orchestrator is that user, with that HOME, before it reads any path)."""
    if env := os.environ.get("CDB_CACHE_DIR"):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "coreml-diffusion-benchmarks"
