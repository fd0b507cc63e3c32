"""Shared test helpers: the real CLI in subprocesses, and the real worker envs."""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.config.envs import Env

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PMSET_CAPTURES = REPO / "tests" / "fixtures" / "pmset"
os.environ["HF_HUB_OFFLINE"] = "1"
# Synthetic weights and reference outputs that tests make (some by fake workers) never land in the
# user's cache, where a real session would find them; a test that wants its own cache still sets one.
os.environ["CDB_CACHE_DIR"] = tempfile.mkdtemp(prefix="cdb-test-cache-")
atexit.register(shutil.rmtree, os.environ["CDB_CACHE_DIR"], ignore_errors=True)


PRIVSEP_USER = "cdb-privsep-test"
AS_ROOT_WITH_A_USER = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("useradd") is None
    or not Path("/usr/bin/python3").exists(),
    reason="needs root, useradd and /usr/bin/python3 (as `sudo` on a Mac would be)")
# the orchestrator's own dependencies, read from pyproject so a new one cannot be missed in user_venv
ORCHESTRATOR_DEPS = [*tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"], "safetensors"]


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


def in_env(python: Path, script: Path, *args: str, timeout: float = 600) -> str:
    """Run a test script inside a worker env (where the toolchain lives), the checkout on its
    PYTHONPATH as a worker has it; its stdout."""
    p = subprocess.run([str(python), str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                       env=Env.worker_environ())
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


@pytest.fixture(scope="session")
def mlx_python(env_python) -> Path:
    return env_python("mlx")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A cache of its own, so synthetic weights and references are made from scratch here."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def fake_pmset(tmp_path, monkeypatch):
    """A `pmset` executable that prints real captures from tests/fixtures/pmset/; call it with the
    capture names for `-g batt` and `-g` (`-g therm` prints the quiet Mac's capture)."""
    exe = tmp_path / "pmset"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "fakes" / "pmset_replay.py"}" "$@"\n')
    exe.chmod(0o755)

    def point_at(batt: str, settings: str) -> str:
        monkeypatch.setenv("CDB_PMSET_BATT", str(PMSET_CAPTURES / batt))
        monkeypatch.setenv("CDB_PMSET_SETTINGS", str(PMSET_CAPTURES / settings))
        monkeypatch.setenv("CDB_PMSET_THERM", str(PMSET_CAPTURES / "therm-no-warning-apple-silicon.txt"))
        return str(exe)

    return point_at


def stand_in(path: Path, script: Path, python: str = sys.executable) -> Path:
    """An executable at `path` that runs `script` (a fake worker's interpreter, a fake meter)."""
    path.write_text(f'#!/bin/sh\nexec "{python}" "{script}" "$@"\n')
    path.chmod(0o755)
    return path


def fake_worker_matrix(path: Path, runs: int, power: str, order: str = "interleaved") -> Path:
    """A one-cell matrix for a fake worker given as `--env diffusers=...` (tests/fakes/fake_worker.py):
    the tiny synthetic model at 64x64, 3 iterations, no cooldown or load wait; `power` is its
    [power] table's lines."""
    from workers.contract.inputs import pinned_inputs

    dig = pinned_inputs(64).digests()
    path.write_text(f"""
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
"64" = {{ latent = "{dig['latent']}", text_embedding = "{dig['text_embedding']}" }}
[timing]
warmup = 0
iterations = 3
runs = {runs}
cooldown_s = 0
order = "{order}"
run_timeout_s = 120
[power]
{power}
[preflight]
load_settle_max_s = 0
[equivalence]
reference = {{ backend = "diffusers", env = "diffusers", device = "cpu", precision = "fp32" }}
[[cells]]
id = "fake"
backend = "diffusers"
env = "diffusers"
device = "cpu"
precision = "fp32"
resolution = 64
""")
    return path


def only_session(out: Path) -> Path:
    """The one session folder a run wrote under `out`."""
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


@pytest.fixture(scope="session")
def quick_session(diffusers_python, mlx_python, cache_dir, tmp_path_factory):
    """examples/quick.toml run once through the CLI, shared by every test that needs a real
    session: (process, session folder). Its duration is benchmarks/quick_example.py's to measure:
    a loaded machine is slower, so no test asserts it."""
    out = tmp_path_factory.mktemp("quick")
    p = cli(str(REPO / "examples" / "quick.toml"), "--out", str(out), env={"CDB_CACHE_DIR": str(cache_dir)})
    return p, only_session(out)


ENV_FIXTURES = {"env_python", "diffusers_python", "mlx_python", "quick_session"}


def pytest_collection_modifyitems(items) -> None:
    """Each test's tier follows from what it needs: a worker env fixture makes it `env` (or
    `coreml`, marked in its module); a `slow` test stays out of `unit`, which must run in under a
    minute; a `fleet` test keeps its own tier; anything else is `unit`."""
    for item in items:
        needs_env = bool(ENV_FIXTURES & set(item.fixturenames))
        if item.get_closest_marker("coreml") or item.get_closest_marker("fleet") or (
                item.get_closest_marker("slow") and not needs_env):
            continue
        item.add_marker(pytest.mark.env if needs_env else pytest.mark.unit)


def unprivileged_user(name: str = PRIVSEP_USER) -> pwd.struct_passwd:
    """A real unprivileged user, made on first use (root tests: sudo's invoking user, or a stranger)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


@pytest.fixture(scope="module")
def shared():
    """A folder an unprivileged user can read (pytest's own temporary folders are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="cdb-privsep-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def user_venv(folder: Path) -> Path:
    """A venv of /usr/bin/python3 with the orchestrator's dependencies under `folder`, which an
    unprivileged user can read (this box's own Python lives under /root, which they cannot); its
    interpreter."""
    venv = folder / "venv"
    uv = os.environ.get("UV") or shutil.which("uv")
    subprocess.run([uv, "venv", "-q", "--python", "/usr/bin/python3", str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), *ORCHESTRATOR_DEPS], check=True)
    return venv / "bin" / "python"


def root_powermetrics(folder: Path, python: Path) -> tuple[Path, Path]:
    """A root-owned stand-in powermetrics in `folder` (the replay of a real capture) for a root
    broker's `broker.POWERMETRICS`, and the file where each of its starts records its uids. A
    broker passes no environment: the stand-in carries its own."""
    for name, source in (("powermetrics_replay.py", REPO / "tests" / "fakes" / "powermetrics_replay.py"),
                         ("capture.plist", REPO / "tests" / "fixtures" / "powermetrics" / "m4-plist-1sample-thermal.plist")):
        shutil.copy(source, folder / name)
    ids, meter = folder / "powermetrics-ids", folder / "powermetrics"
    meter.write_text(f'#!/bin/sh\nCDB_REPLAY_FILE="{folder / "capture.plist"}" CDB_REPLAY_IDFILE="{ids}" exec "{python}" '
                     f'"{folder / "powermetrics_replay.py"}" "$@"\n')
    meter.chmod(0o755)
    return meter, ids


def start_broker(python: Path, meter: Path, sock: Path, user: pwd.struct_passwd) -> subprocess.Popen:
    """`sudo orchestrate broker --socket SOCK` for `user`, run by root with `meter` as its
    `broker.POWERMETRICS`; returned once it says it listens."""
    start = (f"import orchestrator.energy.meters.broker as b; b.POWERMETRICS = {str(meter)!r}; "
             "from orchestrator.cli import main; main()")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": "/root", "SUDO_UID": str(user.pw_uid),
           "SUDO_GID": str(user.pw_gid), "SUDO_USER": user.pw_name}
    proc = subprocess.Popen([str(python), "-c", start, "broker", "--socket", str(sock)], env=env, cwd="/",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(f"meter broker: listening at {sock} for {user.pw_name}"), (line, proc.communicate())
    return proc
