"""`orchestrate selftest`: its checks read from run records (a meter's channels, the Neural
Engine's power on CPU_AND_NE against CPU_ONLY, divergence, the workers' uid), and, marked slow,
the command itself on this host: diffusers and MLX pass on the CPU, Core ML converts and is
unsupported for prediction, there is no meter, and selftest.json says so."""

import json
import os

import pytest
from conftest import cli

from orchestrator.results.records import RunRecord
from orchestrator.selftest import CELLS, backend_check, matrix_text, meter_checks, uid_check


def _run(cell_id, status="ok", **fields):
    return RunRecord(session_id="s", cell_id=cell_id, run_index=0, status=status, **fields)


def _channels(**rises):
    """energy_by_channel with a baseline of 1 W and the given rise per channel."""
    return {ch: {"baseline_w": 1.0, "active_w": 1.0 + rise} for ch, rise in rises.items()}


def test_the_neural_engine_must_rise_on_cpu_and_ne_and_not_on_cpu_only():
    good = [_run("coreml-ane-fp16", energy_by_channel=_channels(total=3.0, cpu=0.5, ane=2.5)),
            _run("coreml-cpu-fp16", energy_by_channel=_channels(total=2.0, cpu=2.0, ane=0.01))]
    checks = {c.name: c for c in meter_checks(good, "powermetrics", "")}
    assert {c.status for c in checks.values()} == {"pass"}
    assert checks["meter powermetrics: ane channel"].figures == pytest.approx({"CPU_AND_NE": 2.5, "CPU_ONLY": 0.01})
    wrong = [_run("coreml-ane-fp16", energy_by_channel=_channels(total=3.0, cpu=3.0, ane=0.0)),
             _run("coreml-cpu-fp16", energy_by_channel=_channels(total=2.0, cpu=2.0, ane=0.0))]
    checks = {c.name: c for c in meter_checks(wrong, "powermetrics", "")}
    assert checks["meter powermetrics on coreml-ane-fp16"].status == "fail"
    assert "did not raise ane" in checks["meter powermetrics on coreml-ane-fp16"].detail
    assert checks["meter powermetrics: ane channel"].status == "fail"


def test_a_loaded_window_must_raise_the_total_and_the_cells_device():
    flat = [_run("diffusers-mps-fp16", energy_by_channel=_channels(total=0.5, cpu=0.5, gpu=0.0))]
    (check,) = meter_checks(flat, "powermetrics", "")
    assert check.status == "fail" and check.detail == "loaded window did not raise gpu"
    unmetered = [_run("mlx-cpu-fp32", energy_unavailable_reason="meter died")]
    assert [c.status for c in meter_checks(unmetered, "rapl", "")] == ["fail"]
    (none,) = meter_checks(flat, None, "no power meter available on this host")
    assert none.status == "unavailable" and "no power meter" in none.detail


def test_backend_checks_say_what_works_what_is_unsupported_and_what_failed():
    assert backend_check(_run("mlx-cpu-fp32", latency_ms_median=5.0, cosine=1.0, mse=0.0,
                              numerically_divergent=False)).status == "pass"
    diverged = backend_check(_run("mlx-gpu-fp16", cosine=0.2, mse=3.0, numerically_divergent=True))
    assert diverged.status == "fail" and "diverges" in diverged.detail
    unsupported = backend_check(_run("coreml-ane-fp16", "unsupported", failure_reason="Core ML prediction needs macOS",
                                     conversion={"key": "k", "package_bytes": 5}))
    assert unsupported.status == "unsupported" and unsupported.figures["conversion"]["package_bytes"] == 5
    failed = backend_check(_run("diffusers-cpu-fp32", "failed", failure_reason="worker exited with code 1"))
    assert (failed.status, failed.detail) == ("fail", "worker exited with code 1")
    unchecked = backend_check(_run("diffusers-cpu-fp32", equivalence_unavailable_reason="no reference"))
    assert unchecked.status == "fail" and "no reference" in unchecked.detail


def test_workers_must_run_as_this_user():
    me = os.getuid()
    assert uid_check([_run("a", worker_uid=me)]).status == "pass"
    other = uid_check([_run("a", worker_uid=me), _run("b", worker_uid=me + 1)])
    assert other.status == "fail" and other.figures == {"uids": sorted([me, me + 1]), "expected": me}


def test_the_selftest_matrix_covers_every_backend_device_and_compute_unit(tmp_path):
    from orchestrator.config.matrix import load_matrix
    from workers.contract.backends import BACKENDS

    path = tmp_path / "m.toml"
    path.write_text(matrix_text())
    cells = load_matrix(path, {"diffusers", "mlx", "coreml-ct9"}).enabled_cells
    assert [c.id for c in cells] == [c[0] for c in CELLS]
    assert {c.backend for c in cells} == set(BACKENDS)
    assert {c.compute_unit for c in cells if c.backend == "coreml"} == {"CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"}


@pytest.mark.slow
def test_selftest_on_this_host(diffusers_python, mlx_python, env_python, cache_dir, tmp_path):
    env_python("coreml-ct9")
    p = cli("selftest", "--out", str(tmp_path), env={"CDB_CACHE_DIR": str(cache_dir)}, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (path,) = tmp_path.glob("*/selftest.json")
    report = json.loads(path.read_text())
    assert report["passed"] is True and report["host"]["cpu"] and report["doctor"]["backends"]
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["backend diffusers-cpu-fp32"] == status["backend mlx-cpu-fp32"] == "pass"
    for unit in ("cpu", "gpu", "ane"):
        check = next(c for c in report["checks"] if c["name"] == f"backend coreml-{unit}-fp16")
        assert check["status"] == "unsupported" and "needs macOS" in check["detail"]
        assert check["figures"]["conversion"]["package_bytes"] > 0
    assert status["meter"] == "unavailable" and status["worker uid"] == "pass"
    assert "backend mlx-cpu-fp32" in p.stdout and "selftest passed" in p.stderr and str(path) in p.stderr
