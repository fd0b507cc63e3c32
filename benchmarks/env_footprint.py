"""What each synced environment costs this host: the bytes its wheels download (the size uv.lock
records for the wheel of each installed package that fits this interpreter and platform) and the
disk its .venv takes; then the distinct wheels of all of them (what a first run of every env
downloads: envs that share a wheel download it once into uv's cache). Run from the checkout after `orchestrate envs sync` (or the quick example):

    uv run python benchmarks/env_footprint.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]


def _installed(python: Path) -> dict[str, str]:
    out = subprocess.run(["uv", "pip", "list", "--format", "json", "--python", str(python)],
                         capture_output=True, text=True, check=True).stdout
    return {canonicalize_name(p["name"]): p["version"] for p in json.loads(out)}


def _tags(python: Path) -> list[str]:
    code = "from packaging.tags import sys_tags; print('\\n'.join(str(t) for t in sys_tags()))"
    p = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return p.stdout.split() if p.returncode == 0 else [str(t) for t in sys_tags()]


def _wheels(lock: Path, installed: dict[str, str], tags: list[str]) -> tuple[dict[str, int], int]:
    """The best-fitting wheel of each installed package (url: bytes), and how many had none in the lock."""
    rank = {t: i for i, t in enumerate(tags)}
    wheels: dict[str, int] = {}
    missing = 0
    for pkg in tomllib.loads(lock.read_text())["package"]:
        name = canonicalize_name(pkg["name"])
        if installed.get(name) != pkg.get("version") or "wheels" not in pkg:
            continue
        fits = [(min(rank.get(str(t), len(rank)) for t in parse_wheel_filename(w["url"].rsplit("/", 1)[1])[3]), w)
                for w in pkg["wheels"]]
        best = min((f for f in fits if f[0] < len(rank)), key=lambda f: f[0], default=None)
        if best is None:
            missing += 1
        else:
            wheels[best[1]["url"]] = best[1].get("size", 0)
    return wheels, missing


def _disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> int:
    projects = [REPO, *sorted(p.parent for p in (REPO / "envs").glob("*/pyproject.toml"))]
    print(f"{'env':<14} {'packages':>8} {'download MB':>12} {'.venv MB':>9}")
    every: dict[str, int] = {}
    for project in projects:
        venv, lock = project / ".venv", project / "uv.lock"
        python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        name = "orchestrator" if project == REPO else project.name
        if not python.exists() or not lock.exists():
            print(f"{name:<14} not synced here")
            continue
        installed = _installed(python)
        wheels, missing = _wheels(lock, installed, _tags(python))
        every.update(wheels)
        note = f"  ({missing} built from source)" if missing else ""
        print(f"{name:<14} {len(installed):>8} {sum(wheels.values()) / 1e6:>12.1f} {_disk(venv) / 1e6:>9.1f}{note}")
    print(f"{'all, distinct':<14} {len(every):>8} {sum(every.values()) / 1e6:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
