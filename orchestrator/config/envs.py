"""Worker environments: one uv project per conflicting toolchain under `envs/<name>/`, or an
existing interpreter named with `--env NAME=/path/to/python` where uv cannot build one."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker

from orchestrator.config.paths import ENVS_DIR, REPO_ROOT
from orchestrator.errors import UserError

KEY_PACKAGES = ("torch", "diffusers", "coremltools", "mlx", "numpy")
SYNC_STAMP = ".cdb-synced-lock"  # written into the venv after a successful sync: the lock it matches


@dataclass(frozen=True)
class Env:
    name: str
    project: Path | None  # envs/<name>, or None for an external interpreter
    external_python: Path | None = None

    @property
    def python(self) -> Path:
        if self.external_python is not None:
            return self.external_python
        assert self.project is not None
        return self.project / ".venv" / "bin" / "python"

    @property
    def lock(self) -> Path | None:
        return self.project / "uv.lock" if self.project else None

    def lock_sha256(self) -> str | None:
        lock = self.lock
        return hashlib.sha256(lock.read_bytes()).hexdigest() if lock and lock.is_file() else None

    @property
    def synced(self) -> bool:
        if self.external_python is not None:
            return self.external_python.exists()
        assert self.project is not None
        stamp = self.project / ".venv" / SYNC_STAMP
        return self.python.exists() and stamp.is_file() and stamp.read_text().strip() == self.lock_sha256()

    def locked_versions(self) -> dict[str, str]:
        """Versions of the key packages as the lock pins them for this env's Python (a lock may pin
        one version per Python range: the entry whose `resolution-markers` match)."""
        lock = self.lock
        if not lock or not lock.is_file():
            return {}
        python = self.python_version() or self.settings().get("python") or platform.python_version()
        where = {"python_full_version": python, "python_version": ".".join(python.split(".")[:2])}
        packages = tomllib.loads(lock.read_text()).get("package", [])
        return {p["name"]: p["version"] for p in packages if p.get("name") in KEY_PACKAGES and "version" in p
                and (not p.get("resolution-markers") or any(Marker(m).evaluate(where) for m in p["resolution-markers"]))}

    def installed_versions(self) -> dict[str, str]:
        """Versions of the key packages installed in the env's venv, from their `.dist-info` folders
        (no interpreter started); empty for an unbuilt env or an `--env` interpreter."""
        if self.project is None or self.external_python is not None:
            return {}
        out = {}
        for info in (self.project / ".venv").glob("lib/python*/site-packages/*.dist-info"):
            name, _, version = info.name.removesuffix(".dist-info").partition("-")
            if name.lower() in KEY_PACKAGES:
                out[name.lower()] = version
        return out

    def python_version(self) -> str | None:
        """From the venv's pyvenv.cfg, so listing envs starts no interpreter."""
        if self.external_python is not None or self.project is None:
            return None
        cfg = self.project / ".venv" / "pyvenv.cfg"
        if not cfg.is_file():
            return None
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                return value.strip()
        return None

    def python_label(self) -> str:
        """The env's Python as a version, built or not: the venv's, an `--env` interpreter's (asked),
        or `not built` with the version the env needs."""
        if version := self.python_version():
            return version
        if self.external_python is not None:
            try:
                p = subprocess.run([str(self.python), "-c", "import platform; print(platform.python_version())"],
                                   capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"unusable ({e})"
            return p.stdout.strip() if p.returncode == 0 else "unusable (it did not start)"
        needs = self.settings().get("python")
        return f"not built (needs {needs})" if needs else "not built"

    def package_versions(self) -> tuple[dict[str, str], str]:
        """The key packages' versions and where they come from: installed in a synced env, else
        as the lock pins them for its Python."""
        return (self.installed_versions(), "installed") if self.synced else (self.locked_versions(), "lock")

    def settings(self) -> dict:
        """The project's `[tool.cdb]` table: `python` (an interpreter version the env needs, which
        uv may not find by itself) and `lock-note` (why a lock may be missing, where one must be
        created on first sync)."""
        pyproject = self.project / "pyproject.toml" if self.project else None
        if pyproject is None or not pyproject.is_file():
            return {}
        return tomllib.loads(pyproject.read_text()).get("tool", {}).get("cdb", {})

    @property
    def unready_reason(self) -> str | None:
        """Why this env cannot be used as it stands (None when synced)."""
        if self.synced:
            return None
        if self.external_python is not None:
            return f"interpreter {self.python} does not exist"
        if self.lock is None or not self.lock.is_file():
            note = self.settings().get("lock-note")
            return f"env {self.name} has no uv.lock yet" + (f": {note}" if note else "")
        return f"env {self.name} is not synced with its lock: run `orchestrate envs sync {self.name}`"

    @staticmethod
    def worker_environ() -> dict[str, str]:
        """Environment for a worker: every env finds the harness in this checkout, on PYTHONPATH
        (envs install only their toolchain, numpy and msgpack, never the harness)."""
        env = dict(os.environ)
        env["HF_HUB_OFFLINE"] = "1"
        env.pop("VIRTUAL_ENV", None)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env


def parse_overrides(values: tuple[str, ...] | list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values:
        name, sep, python = v.partition("=")
        if not sep or not name or not python:
            raise UserError(f"--env {v!r}: expected NAME=/path/to/python")
        path = Path(python).expanduser()
        if not path.exists():
            raise UserError(f"--env {name}: interpreter not found: {path}")
        out[name] = path
    return out


def discover(overrides: dict[str, Path] | None = None) -> dict[str, Env]:
    envs = {
        d.name: Env(d.name, d)
        for d in sorted(ENVS_DIR.iterdir())
        if d.is_dir() and (d / "pyproject.toml").is_file()
    } if ENVS_DIR.is_dir() else {}
    for name, python in (overrides or {}).items():
        envs[name] = Env(name, envs[name].project if name in envs else None, python)
    return envs


def uv_executable() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        raise UserError(
            "uv is not installed: it builds the worker environments. Install it with `pip install uv` "
            "(or see https://docs.astral.sh/uv/), or point envs at existing interpreters with --env NAME=PYTHON."
        )
    return uv


def find_python(version: str) -> Path | None:
    """An interpreter of `version` (e.g. "3.12"): uv's own discovery first, then pyenv's
    installs, whose shims uv cannot query when the version is not pyenv's selected one."""
    try:
        p = subprocess.run([uv_executable(), "python", "find", version], capture_output=True, text=True, timeout=60)
        if p.returncode == 0 and p.stdout.strip():
            return Path(p.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for candidate in sorted(root.glob(f"{version}*/bin/python{version}"), reverse=True):
        if subprocess.run([str(candidate), "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


def _uv(env: Env, *args: str, log=print) -> None:
    """Run uv in the env's project with its interpreter pinned; UserError with uv's last words."""
    cmd = [uv_executable(), *args, "--project", str(env.project)]
    if version := env.settings().get("python"):
        python = find_python(version)
        if python is None:
            raise UserError(f"env {env.name} needs Python {version}, and neither uv nor pyenv has one here: "
                            f"install it (`uv python install {version}` or `pyenv install {version}`)")
        cmd += ["--python", str(python)]  # also overrides a UV_PYTHON meant for the other envs
    log(f"env {env.name}: {' '.join(cmd[1:])}")
    environ = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}  # the env's own venv, not the caller's
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, env=environ)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise UserError(f"env {env.name}: uv {args[0]} failed (exit {proc.returncode}).{_hint(env, args[0], proc.stderr)}",
                        *tail.splitlines())


def _hint(env: Env, command: str, stderr: str) -> str:
    """What to do about a failed uv command, from its words: a git source that could not be
    fetched says so (a package name such as python_coreml_stable_diffusion is no Python problem)."""
    text = stderr.lower()
    if "git operation failed" in text or "failed to fetch" in text or "git+" in text:
        note = env.settings().get("lock-note")
        return " A git source could not be fetched: this host must reach its repository." + (f" {note}" if note else "")
    if command == "lock" and (note := env.settings().get("lock-note")):
        return f" {note}"
    if re.search(r"\binterpreter\b|\bno python\b|requested python", text):
        return " If no suitable Python was found, install one or set UV_PYTHON=/path/to/python."
    return ""


def sync(env: Env, log=print) -> float:
    """`uv sync --locked` in the env's project; uv's own progress goes to the terminal. An env
    whose lock can only be made where its sources are reachable (see `lock-note`) is locked
    first. Returns seconds taken; raises UserError with uv's last words when it fails."""
    if env.external_python is not None or env.project is None:
        log(f"env {env.name}: uses {env.python} (--env), nothing to sync")
        return 0.0
    t0 = time.monotonic()
    if env.lock is None or not env.lock.is_file():
        if not env.settings().get("lock-note"):
            raise UserError(f"env {env.name}: {env.project}/uv.lock is missing; create it with `uv lock --project {env.project}`")
        log(f"env {env.name}: no uv.lock yet; creating it ({env.settings()['lock-note']})")
        _uv(env, "lock", log=log)
    _uv(env, "sync", "--locked", log=log)
    (env.project / ".venv" / SYNC_STAMP).write_text(f"{env.lock_sha256()}\n")
    return time.monotonic() - t0


def ensure_synced(envs: list[Env], log=print) -> None:
    """Sync the envs a session needs that are missing or older than their lock."""
    for env in envs:
        if not env.synced:
            if env.external_python is not None:
                raise UserError(f"env {env.name}: interpreter {env.python} does not exist")
            log(f"env {env.name} is not synced with its lock; syncing it now")
            sync(env, log)
