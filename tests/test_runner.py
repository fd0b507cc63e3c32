"""The runner against real worker processes that misbehave in each way a run can fail."""

import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from orchestrator.config.envs import Env
from orchestrator.run.worker_client import WorkerRun, run_worker
from workers.contract.fileguard import FileGuard
from workers.contract.messages import Ready, Result, Setup, SetupInputs, SetupModel
from workers.contract.protocol import PROTOCOL_VERSION

FAKE = Path(__file__).parent / "fakes" / "fake_worker.py"


@pytest.fixture
def fake_env(tmp_path):
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return Env("fake", None, external_python=wrapper)


@pytest.fixture
def fake_mode(monkeypatch):
    return lambda mode: monkeypatch.setenv("FAKE_MODE", mode)


def _setup(iterations=2, text_tokens=1):
    inputs = SetupInputs(latent=np.zeros((1, 4, 1, 1), np.float32),
                         text_embedding=np.zeros((1, text_tokens, 768), np.float32),
                         timestep=500, sha256={"latent": "l", "text_embedding": "t"})
    return Setup(cell={"id": "c", "backend": "fake"}, model=SetupModel(source="synthetic", path="/nowhere",
                 sha256="m" * 64,
                 guard=FileGuard(size=1, mtime_ns=1, ctime_ns=1, inode=1, device=1), arch={}), inputs=inputs, warmup=0, iterations=iterations)


def _run(env, tmp_path, timeout_s=20.0):
    return WorkerRun(env, _setup(), label="t", log_path=tmp_path / "run.log", timeout_s=timeout_s)


def test_ok_run_goes_through_ready_then_measure(fake_env, tmp_path, fake_mode):
    fake_mode("ok")
    with WorkerRun(fake_env, _setup(iterations=3), label="t", log_path=tmp_path / "run.log", timeout_s=20) as run:
        ready = run.start()
        assert isinstance(ready, Ready) and ready.realized == {"device": "cpu"} and ready.model_sha256 == "m" * 64
        result = run.measure()
    assert isinstance(result, Result) and len(result.iteration_start_ns) == 3
    assert result.output.dtype == np.float32 and result.output.shape == (1, 4, 1, 1)
    o = run.outcome
    assert o.status == "ok" and o.reason is None and o.exit_code == 0 and o.result is result


@pytest.mark.slow
def test_time_between_ready_and_measure_does_not_count_against_the_timeout(fake_env, tmp_path, fake_mode):
    fake_mode("ok")
    with _run(fake_env, tmp_path, timeout_s=3.0) as run:
        assert isinstance(run.start(), Ready)
        time.sleep(3.5)  # a cooldown and baseline longer than the whole run may take
        run.measure()
    assert run.outcome.status == "ok", run.outcome.reason


# Every fault a worker can commit (tests/fakes/fake_worker.py), and the reason its run records.
WORKER_FAULTS = [
    ("crash", "failed", "exited with code 3 before sending ready"),
    ("garbage", "failed", "oversized frame"),
    ("error", "failed", "worker error: RuntimeError: out of memory"),
    ("markup_error", "failed", "worker error: OSError: could not open [/Users/me/sd/v1-5.safetensors] [/]"),
    ("selfkill", "failed", "killed by signal SIGKILL before sending result"),
    ("bad_exit", "failed", "exited with code 4 after its result"),
    ("unsupported", "unsupported", "MPS is not available [red]"),
    ("surprise", "failed", "protocol: expected ready or unsupported, got 'surprise'"),
    ("bad_field", "failed", "protocol: result: field iteration_start_ns[1]: expected an integer, got 'x'"),
    ("old_protocol", "failed", f"protocol: the worker speaks version 0, this orchestrator version {PROTOCOL_VERSION}"),
    ("hello_uid_str", "failed", "protocol: hello: field uid: expected an integer or null, got 'root'"),
    ("truncated_hello", "failed", "truncated frame: stream ended"),
    ("bogus_length", "failed", "oversized frame: the header announces 4294967295 bytes"),
    ("truncated_result", "failed", "truncated frame: stream ended"),
    ("realized_str", "failed", "protocol: ready: field realized: expected a table, got 'cpu'"),
    ("versions_list", "failed", "protocol: ready: field versions: expected a table, got [1]"),
    ("realized_nan", "failed", "protocol: ready: field realized.x: expected a finite number, got nan"),
    ("realized_bytes", "failed", "protocol: ready: field realized.d: expected plain data"),
    ("realized_deep", "failed", "protocol: ready: field realized.d"),
    ("conversion_str", "failed", "protocol: ready: field realized.conversion: expected a table or null, got str"),
    ("load_inf", "failed", "protocol: ready: field load_s: expected a finite number, got inf"),
    ("facts_int", "failed", "protocol: unsupported: field facts: expected a table, got 3"),
    ("facts_conversion_list", "failed", "protocol: unsupported: field facts.conversion: expected a table or null"),
    ("iter_empty", "failed", "protocol: result: field iteration_start_ns: 0 iterations, at least 2 asked for"),
    ("iter_mismatch", "failed", "protocol: result: field iteration_end_ns: 1 ends for 2 starts"),
    ("iter_backwards", "failed", "protocol: result: field iteration_end_ns: the stamps go backwards"),
    ("iter_huge", "failed", "protocol: result: field iteration_start_ns: a stamp outside 0..2**63-1 ns"),
    ("iter_negative", "failed", "protocol: result: field iteration_start_ns: a stamp outside 0..2**63-1 ns"),
    ("iter_few", "failed", "protocol: result: field iteration_start_ns: 1 iterations, at least 2 asked for"),
    ("faults_negative", "failed", "protocol: result: field minor_faults: -5, a count cannot be negative"),
    ("window_inf", "failed", "protocol: result: field window_end_ns: expected an integer, got inf"),
    ("window_empty", "failed", "protocol: result: field"),
    ("output_shape", "failed", "protocol: result: field output: shape [2, 4, 1, 1], the latent's is [1, 4, 1, 1]"),
    ("output_int", "failed", "protocol: result: field output: dtype int32, expected a float dtype"),
    ("output_list", "failed", "protocol: result: field output: expected an array, got [1.0]"),
]


@pytest.mark.parametrize("mode,status,reason", WORKER_FAULTS)
def test_each_bad_ending_is_a_recorded_outcome(fake_env, tmp_path, fake_mode, mode, status, reason):
    fake_mode(mode)
    o = run_worker(fake_env, _setup(), label="t", log_path=tmp_path / "run.log", timeout_s=20)
    assert o.status == status
    assert reason in o.reason


def test_crash_is_a_failed_start(fake_env, tmp_path, fake_mode):
    """hello arrives; the worker dies before ready: start() says so, and the reason quotes the log."""
    fake_mode("crash")
    with _run(fake_env, tmp_path) as run:
        assert run.start() is None
    assert "before sending ready" in run.outcome.reason and "fake worker: giving up" in run.outcome.reason


def test_unsupported_carries_what_the_worker_said(fake_env, tmp_path, fake_mode):
    fake_mode("unsupported")
    o = run_worker(fake_env, _setup(), label="t", log_path=tmp_path / "run.log", timeout_s=20)
    assert o.unsupported is not None and o.unsupported.versions == {"fake": "1"} and o.exit_code == 0


def test_close_without_measure_ends_the_worker(fake_env, tmp_path, fake_mode):
    """An interrupted cooldown: the loaded worker is stopped, and the run is not ok."""
    fake_mode("ok")
    run = _run(fake_env, tmp_path)
    assert isinstance(run.start(), Ready)
    o = run.close()
    assert o.status == "failed" and "before the worker was asked to measure" in o.reason
    with pytest.raises(ProcessLookupError):
        os.kill(o.hello.pid, 0)


@pytest.mark.slow
def test_hung_worker_times_out_and_is_killed(fake_env, tmp_path, fake_mode):
    fake_mode("hang")
    with _run(fake_env, tmp_path, timeout_s=1.0) as run:
        assert run.start() is None
    o = run.outcome
    assert o.status == "failed" and "timeout: no ready or unsupported" in o.reason
    with pytest.raises(ProcessLookupError):
        os.kill(o.hello.pid, 0)


@pytest.mark.slow
def test_a_worker_that_stops_reading_cannot_block_the_orchestrator(fake_env, tmp_path, fake_mode):
    """A real setup (the pinned inputs) is larger than a pipe's buffer: the write has the run's deadline too."""
    fake_mode("hang")
    setup = _setup(text_tokens=77 * 4)
    with WorkerRun(fake_env, setup, label="t", log_path=tmp_path / "run.log", timeout_s=1.0) as run:
        assert run.start() is None
    assert "timeout: the worker did not read its setup" in run.outcome.reason


def test_an_interpreter_that_cannot_start_is_a_failed_run(tmp_path):
    o = run_worker(Env("gone", None, external_python=tmp_path / "no-python"), _setup(), label="t",
                   log_path=tmp_path / "run.log", timeout_s=5)
    assert o.status == "failed" and "cannot start the worker" in o.reason
