"""The runner against real worker processes that misbehave in each way a run can fail."""

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from orchestrator.envs import Env
from orchestrator.runner import run_worker

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
