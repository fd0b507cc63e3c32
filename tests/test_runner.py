"""The runner against real worker processes that misbehave in each way a run can fail."""

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config.envs import Env
from orchestrator.run.worker_client import run_worker

FAKE = Path(__file__).parent / "fakes" / "fake_worker.py"


@pytest.fixture
def fake_env(tmp_path):
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return Env("fake", None, external_python=wrapper)


def _run(env, tmp_path, mode, timeout_s=20.0, between=lambda ready: None):
    os.environ["FAKE_MODE"] = mode
    try:
        return run_worker(env, {"type": "setup", "iterations": 2}, label="t", log_path=tmp_path / "run.log",
                          timeout_s=timeout_s, between=between)
    finally:
        del os.environ["FAKE_MODE"]


def test_ok_run_carries_result_and_waits_for_between(fake_env, tmp_path):
    seen = []
    o = _run(fake_env, tmp_path, "ok", between=lambda ready: (seen.append(ready["type"]), time.sleep(0.2)))
    assert o.status == "ok", o.reason
    assert seen == ["ready"] and o.wait_s >= 0.2
    assert o.result["echo_iterations"] == 2 and o.result["output"].shape == (2, 4, 1, 1)
    assert o.exit_code == 0


@pytest.mark.parametrize("mode,status,reason", [
    ("crash", "failed", "exited with code 3 before sending ready"),
    ("garbage", "failed", "malformed frame"),
    ("error", "failed", "worker error: RuntimeError: out of memory"),
    ("selfkill", "failed", "killed by signal SIGKILL before sending result"),
    ("bad_exit", "failed", "exited with code 4 after its result"),
    ("unsupported", "unsupported", "MPS is not available"),
])
def test_each_bad_ending_is_a_recorded_outcome(fake_env, tmp_path, mode, status, reason):
    o = _run(fake_env, tmp_path, mode)
    assert o.status == status
    assert reason in o.reason


def test_crash_reason_quotes_the_log(fake_env, tmp_path):
    o = _run(fake_env, tmp_path, "crash")
    assert "fake worker: giving up" in o.reason


def test_hung_worker_times_out_and_is_killed(fake_env, tmp_path):
    t0 = time.monotonic()
    o = _run(fake_env, tmp_path, "hang", timeout_s=1.0)
    assert o.status == "failed" and "timeout" in o.reason
    assert time.monotonic() - t0 < 10
    with pytest.raises(ProcessLookupError):
        os.kill(o.hello["pid"], 0)


def test_an_interpreter_that_cannot_start_is_a_failed_run(tmp_path):
    o = run_worker(Env("gone", None, external_python=tmp_path / "no-python"), {"type": "setup"}, label="t",
                   log_path=tmp_path / "run.log", timeout_s=5)
    assert o.status == "failed" and "cannot start the worker" in o.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as under sudo")
def test_under_sudo_the_worker_runs_as_the_invoking_user(tmp_path, monkeypatch):
    """SUDO_UID names an unprivileged user (created when missing); the worker must run as them,
    with their HOME. The worker's interpreter is a venv of the system Python that user can run."""
    import pwd
    import shutil
    import subprocess
    import tempfile

    from orchestrator.config.privileges import give_to_invoking_user

    name = "cdb-bench-test"
    try:
        pwd.getpwnam(name)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("no useradd to create an unprivileged user")
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    user = pwd.getpwnam(name)
    system_python = shutil.which("python3", path="/usr/bin")
    if system_python is None:
        pytest.skip("no /usr/bin/python3 to build an interpreter the test user may run")
    shared = Path(tempfile.mkdtemp(prefix="cdb-sudo-"))
    shared.chmod(0o755)
    venv = shared / "venv"
    uv = os.environ.get("UV") or shutil.which("uv")
    subprocess.run([uv, "venv", "-q", "--python", system_python, str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "numpy", "msgpack"], check=True)
    wrapper = shared / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{venv / "bin" / "python"}" "{shared / "fake_worker.py"}" "$@"\n')
    wrapper.chmod(0o755)
    shutil.copy(FAKE, shared / "fake_worker.py")
    monkeypatch.setenv("SUDO_UID", str(user.pw_uid))
    monkeypatch.setenv("SUDO_GID", str(user.pw_gid))
    monkeypatch.setenv("SUDO_USER", name)
    o = _run(Env("fake", None, external_python=wrapper), tmp_path, "ok")
    assert o.status == "ok", o.reason
    assert o.hello["uid"] == user.pw_uid
    written = shared / "session"
    (written / "samples").mkdir(parents=True)
    (written / "samples" / "run.json").write_text("{}")
    give_to_invoking_user(written)
    assert {p.stat().st_uid for p in [written, *written.rglob("*")]} == {user.pw_uid}
