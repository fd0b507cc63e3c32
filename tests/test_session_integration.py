"""End to end through the real CLI, the real uv env and real worker processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import BIN, REPO, cli
from conftest import only_session as _session

pytestmark = pytest.mark.slow


def _runs(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "runs.jsonl").read_text().splitlines()]


def test_quick_example_runs_every_cell_every_run(quick_session):
    p, d = quick_session
    assert p.returncode == 0, p.stderr[-3000:]
    runs = _runs(d)
    assert len(runs) == 3 * 3
    assert {(r["cell_id"], r["run_index"]) for r in runs} == {
        (c, i) for c in ("diffusers-cpu-fp32", "diffusers-cpu-bf16", "mlx-cpu-fp32") for i in range(3)}
    assert all(r["status"] == "ok" for r in runs), [r["failure_reason"] for r in runs]
    assert len({r["worker_pid"] for r in runs}) == 9  # a fresh process per run


def test_per_iteration_latencies_are_saved(quick_session):
    _, d = quick_session
    for r in _runs(d):
        s = json.loads((d / r["samples_file"]).read_text())
        assert len(s["latency_ms"]) == r["iterations"] == 20
        assert s["iteration_start_ns"][0] == s["window_start_ns"] and s["iteration_end_ns"][-1] == s["window_end_ns"]
        assert np.median(s["latency_ms"]) == pytest.approx(r["latency_ms_median"])
        assert r["minor_faults_per_step"] >= 0  # counted by the real worker around its timed loop
        res = r["resolution"] // 8
        assert np.load(d / r["output_file"]).shape == (2, 4, res, res)


def test_equivalence_against_the_fp32_reference(quick_session):
    _, d = quick_session
    eq = json.loads((d / "session.json").read_text())["equivalence"]
    for r in _runs(d):
        assert r["finite"] is True
        if r["precision"] == "fp32":  # diffusers against itself, or MLX against diffusers (issue 4's bar)
            assert r["cosine"] >= 0.99999 and r["mse_relative"] <= 1e-8, r
        expected = r["mse"] > eq["mse_max"] or r["cosine"] < eq["cosine_min"]
        assert r["numerically_divergent"] is expected


def test_session_files_and_regenerated_report(quick_session):
    _, d = quick_session
    session = json.loads((d / "session.json").read_text())
    assert session["status"] == "complete"
    assert session["model"]["synthetic"] is True and session["model"]["preset"] == "tiny"
    assert session["provenance"]["envs"]["diffusers"]["lock_sha256"]
    assert "torch" in session["worker_versions"]["diffusers"]
    assert "mlx" in session["worker_versions"]["mlx"]
    results = (d / "report.md").read_text().split("\n## ")[0]  # the header and the results table
    table = [line for line in results.splitlines() if line.startswith("| diffusers-cpu-")]
    assert len(table) == 2  # the comparison rows start with their metric; the time budget comes later
    assert "\n## Time budget\n" in (d / "report.md").read_text()
    before = json.loads((d / "summary.json").read_text())
    p = cli("report", str(d), "--format", "json")
    assert p.returncode == 0, p.stderr
    again = json.loads(p.stdout)
    strip = lambda s: [{k: v for k, v in c.items()} for c in s["cells"]]  # noqa: E731
    assert strip(again) == strip(before)
    fp32 = next(c for c in again["cells"] if c["cell_id"] == "diffusers-cpu-fp32")
    medians = sorted(r["latency_ms_median"] for r in _runs(d) if r["cell_id"] == "diffusers-cpu-fp32")
    assert fp32["latency_ms_median"] == pytest.approx(medians[1])
    assert fp32["n_ok"] == 3 and fp32["status"] == "ok"


def test_worker_debug_command_runs_one_cell(diffusers_python, cache_dir):
    p = subprocess.run([str(BIN / "worker"), "--cell", "diffusers-cpu-fp32", "--matrix", str(REPO / "examples" / "quick.toml"), "--iterations", "3"],
                       capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "CDB_CACHE_DIR": str(cache_dir)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("  iteration ") == 3
    assert "finite=True" in p.stdout and "latency ms: median" in p.stdout
    assert "minor page faults per timed step: " in p.stdout  # the real worker counted them


RESILIENCE = """
[model]
source = "synthetic"
preset = "tiny"

[inputs.sha256]
"64" = {{ latent = "{latent}", text_embedding = "{text}" }}

[timing]
warmup = 1
iterations = 3
runs = 3
cooldown_s = 3
order = "sequential"
run_timeout_s = 300

[preflight]
load_settle_max_s = 2

[[cells]]
id = "cpu"
backend = "diffusers"
env = "diffusers"
device = "cpu"
precision = "fp32"
resolution = 64

[[cells]]
id = "mps"
backend = "diffusers"
env = "diffusers"
device = "mps"
precision = "fp16"
resolution = 64

[[cells]]
id = "mlx"
backend = "mlx"
env = "mlx"
device = "gpu"
precision = "fp16"
resolution = 64
"""


def _workers_of(cache_dir: Path, log: str = "") -> list[psutil.Process]:
    """This test run's `python -m workers` processes (other checkouts' tests may be running sessions
    of the same matrix beside us) whose stderr is a log whose name starts with `log`: a run's worker,
    spawned or forked from a fork server, writes its stderr to logs/<cell>.run-NNN.log, a fork
    server to logs/forkserver.<env>.log; "" matches them all. Stderr, not any open fd: a fork
    server holds the run's log for a moment too, between receiving it and forking the worker."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if cmd[1:3] != ["-m", "workers"] or p.environ().get("CDB_CACHE_DIR") != str(cache_dir):
                continue
            if any(f.fd == 2 and Path(f.path).parent.name == "logs" and Path(f.path).name.startswith(log)
                   for f in p.open_files()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def resilience_session(diffusers_python, cache_dir, tmp_path_factory):
    """Kill one worker mid-run (SIGKILL while it waits in cooldown); the session goes on."""
    from workers.contract.inputs import pinned_inputs

    tmp = tmp_path_factory.mktemp("resilience")
    dig = pinned_inputs(64).digests()
    matrix = tmp / "m.toml"
    matrix.write_text(RESILIENCE.format(latent=dig["latent"], text=dig["text_embedding"]))
    out = tmp / "results"
    proc = subprocess.Popen([str(BIN / "orchestrate"), str(matrix), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CDB_CACHE_DIR": str(cache_dir)})
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        for p in _workers_of(cache_dir, "cpu.run-001"):
            time.sleep(0.5)
            p.send_signal(signal.SIGKILL)
            victim = p.pid
        time.sleep(0.1)
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, stderr, _session(out), victim, matrix


def test_killed_worker_is_a_failed_run_and_the_rest_complete(resilience_session):
    code, stderr, d, victim, _ = resilience_session
    assert victim is not None, "never saw the worker of cpu run 1"
    assert code == 1, stderr[-2000:]  # some runs failed
    by = {(r["cell_id"], r["run_index"]): r for r in _runs(d)}
    assert len(by) == 9
    killed = by[("cpu", 1)]
    assert killed["status"] == "failed" and "SIGKILL" in killed["failure_reason"]
    assert by[("cpu", 0)]["status"] == by[("cpu", 2)]["status"] == "ok"


def test_unavailable_devices_are_unsupported(resilience_session):
    _, _, d, _, _ = resilience_session
    by = {(r["cell_id"], r["run_index"]): r for r in _runs(d)}
    for i in range(3):
        assert by[("mps", i)]["status"] == "unsupported"
        assert "MPS is not available" in by[("mps", i)]["failure_reason"]
        assert by[("mlx", i)]["status"] == "unsupported"
        assert "no GPU backend" in by[("mlx", i)]["failure_reason"]  # Linux mlx[cpu]
    summary = json.loads((d / "summary.json").read_text())
    cells = {c["cell_id"]: c for c in summary["cells"]}
    assert cells["cpu"]["status"] == "partial" and cells["cpu"]["n_failed"] == 1
    assert cells["mps"]["status"] == "unsupported"


def test_sigterm_keeps_finished_runs_and_resume_completes_the_session(diffusers_python, cache_dir, tmp_path):
    from workers.contract.inputs import pinned_inputs

    dig = pinned_inputs(64).digests()
    matrix = tmp_path / "m.toml"
    matrix.write_text(RESILIENCE.format(latent=dig["latent"], text=dig["text_embedding"])
                      .replace('device = "mps"', 'device = "mps"\nenabled = false')
                      .replace('device = "gpu"', 'device = "gpu"\nenabled = false'))
    out = tmp_path / "results"
    env = {**os.environ, "CDB_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen([str(BIN / "orchestrate"), str(matrix), "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(f.stat().st_size for f in out.glob("*/runs.jsonl")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    d = _session(out)
    first = json.loads((d / "session.json").read_text())
    assert first["status"] == "interrupted" and first["resumes"] == []
    assert (d / "summary.json").is_file()
    done = _runs(d)
    assert 1 <= len(done) < 3
    assert not _workers_of(cache_dir), "a worker outlived the orchestrator"
    (hint,) = [line for line in stderr.splitlines() if line.startswith("continue with: ")]
    assert hint == f"continue with: uv run orchestrate {matrix} --resume {d}"  # one line, whatever the width
    p = subprocess.run(hint.removeprefix("continue with: "), shell=True, capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=900)  # pasted as printed
    assert p.returncode == 0, p.stderr[-2000:]
    runs = _runs(d)
    assert [(r["cell_id"], r["run_index"]) for r in runs] == [("cpu", i) for i in range(3)]
    assert runs[: len(done)] == done
    session = json.loads((d / "session.json").read_text())
    assert session["status"] == "complete"
    # The resume keeps the original start's provenance and adds its own, as it may be another machine.
    assert session["provenance"] == first["provenance"] and session["started_at"] == first["started_at"]
    [resume] = session["resumes"]
    assert resume["host"]["cpu_count_logical"] == os.cpu_count() and resume["harness"]["git_commit"]
    assert resume["preflight"]["idle_load"] is not None
    assert resume["references"]["64"]["cached"] and session["references"] == first["references"]
    assert f"Resumed {resume['at']} on: " in (d / "report.md").read_text()


@pytest.fixture
def replay_meter(tmp_path):
    """powermetrics replaced by the replay of a real capture, as the matrix key allows."""
    exe = tmp_path / "powermetrics"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "fakes" / "powermetrics_replay.py"}" "$@"\n')
    exe.chmod(0o755)
    capture = REPO / "tests" / "fixtures" / "powermetrics" / "m4-plist-1sample-thermal.plist"
    return exe, {"CDB_REPLAY_FILE": str(capture), "CDB_REPLAY_PIDFILE": str(tmp_path / "pid")}


def _energy_matrix(tmp_path, exe) -> Path:
    from workers.contract.inputs import pinned_inputs

    dig = pinned_inputs(64).digests()
    text = RESILIENCE.format(latent=dig["latent"], text=dig["text_embedding"])
    text = text.replace('device = "mps"', 'device = "mps"\nenabled = false').replace('device = "gpu"', 'device = "gpu"\nenabled = false')
    text = text.replace("runs = 3", "runs = 2").replace("cooldown_s = 3", "cooldown_s = 1")
    text = text.replace("cooldown_s = 1", 'cooldown_s = 1\ncooldown = "adaptive"\ncooldown_min_s = 1\ncooldown_max_s = 10')
    text += f'\n[power]\nmeter = "powermetrics"\npowermetrics = "{exe}"\ninterval_ms = 50\nbaseline_s = 0.5\nidle_s = 1\n'
    matrix = tmp_path / "energy.toml"
    matrix.write_text(text)
    return matrix


def test_energy_through_a_powermetrics_replay(diffusers_python, cache_dir, tmp_path, replay_meter):
    exe, env = replay_meter
    matrix = _energy_matrix(tmp_path, exe)
    p = cli(str(matrix), "--out", str(tmp_path / "results"), env={"CDB_CACHE_DIR": str(cache_dir), **env})
    assert p.returncode == 0, p.stderr[-3000:]
    d = _session(tmp_path / "results")
    for r in _runs(d):
        assert r["status"] == "ok" and r["meter"] == "powermetrics"
        assert r["min_window_s"] == pytest.approx(4.0)  # 80 updates of 50 ms
        assert r["window_s"] >= 4.0 and r["iterations"] >= 3 and r["short_window"] is False
        # the baseline window is power.baseline_s of sleep: never shorter; a loaded host only lengthens it
        assert r["baseline_window_s"] >= 0.5 and r["meter_intervals_in_baseline"] >= 1
        assert set(r["energy_by_channel"]) == {"cpu", "gpu", "ane", "total"}
        assert r["throttled"] is False  # the capture says Nominal
        # the replay draws the same power at idle and under load: adaptive cooldown settles at its minimum
        # (settled: it ended before cooldown_max_s by its own rule; a busy host only lengthens it)
        assert r["cooldown_mode"] == "adaptive" and r["cooldown_settled"] is True and 1 <= r["cooldown_s"]
        # the replayed capture draws a steady 3.049 J per 1.0237 s of samples, whatever the step does
        cpu = r["energy_by_channel"]["cpu"]
        assert cpu["active_w"] == pytest.approx(3.049 / 1.023685416, rel=0.2)
        assert cpu["gross_energy_per_step_j"] == pytest.approx(cpu["active_w"] * r["window_s"] / r["iterations"])
        assert r["energy_per_step_j"] == pytest.approx(
            (r["active_w"] - r["baseline_w"]) * r["window_s"] / r["iterations"])
        assert r["estimated_energy_per_50_step_image_j"] == pytest.approx(50 * r["energy_per_step_j"])
        samples = json.loads((d / r["meter_samples_file"]).read_text())
        assert samples["intervals"] and len(samples["window_ns"]) == 2
    (idle,) = json.loads((d / "session.json").read_text())["power"]["idle_w"].values()
    assert idle > 0
    summary = json.loads((d / "summary.json").read_text())
    cell = summary["cells"][0]
    assert cell["energy_per_step_j"] is not None and "energy_per_step_j[cpu]" in cell["metrics"]
    assert "energy J/step" in (d / "report.md").read_text()


def test_battery_power_refuses_energy_unless_forced(diffusers_python, cache_dir, tmp_path, replay_meter, fake_pmset):
    exe, env = replay_meter
    matrix = _energy_matrix(tmp_path, exe)
    env = {"CDB_CACHE_DIR": str(cache_dir), **env,
           "CDB_PMSET": fake_pmset("batt-battery-discharging-m1-air.txt", "g-currently-in-use-lowpowermode0-m3.txt")}
    p = cli(str(matrix), "--out", str(tmp_path / "refused"), env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "drawing from Battery Power" in p.stderr and "--force-power" in p.stderr
    assert not list((tmp_path / "refused").glob("*/runs.jsonl"))  # refused before any run
    p = cli(str(matrix), "--out", str(tmp_path / "forced"), "--force-power", "--runs", "1", env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    d = _session(tmp_path / "forced")
    (run,) = _runs(d)
    assert run["status"] == "ok" and run["forced_power"] is True and run["energy_per_step_j"] is not None
    assert run["power_problems"] == ["drawing from Battery Power, battery 100%, not AC power"]
    assert run["power_state"]["source"] == "Battery Power" and run["thermal_before_run"]["limited"] is False
    # a wait that did not settle lasted its whole bound (load_settle_max_s = 2); test_preflight.py
    # checks with a fake clock that it stops there
    assert run["load_wait"]["settled"] or run["load_wait"]["waited_s"] >= 2
    assert run["load_unsettled"] is (not run["load_wait"]["settled"])
    session = json.loads((d / "session.json").read_text())
    assert session["preflight"]["force_power"] is True and session["preflight"]["power"]["source"] == "Battery Power"


def test_sigkill_of_the_orchestrator_takes_the_meter_with_it(diffusers_python, cache_dir, tmp_path, replay_meter):
    exe, env = replay_meter
    matrix = _energy_matrix(tmp_path, exe)
    proc = subprocess.Popen([str(BIN / "orchestrate"), str(matrix), "--out", str(tmp_path / "results")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CDB_CACHE_DIR": str(cache_dir), **env})
    pidfile = Path(env["CDB_REPLAY_PIDFILE"])
    deadline = time.monotonic() + 300
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    meter_pid = int(pidfile.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    while psutil.pid_exists(meter_pid) and psutil.Process(meter_pid).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() - t0 < 10:  # the guard's poll and its 2 s grace, with room for a loaded host
        time.sleep(0.05)
    assert not psutil.pid_exists(meter_pid) or psutil.Process(meter_pid).status() == psutil.STATUS_ZOMBIE
    time.sleep(3)
    assert not _workers_of(cache_dir)


def test_torch_compile_cell_compiles_outside_the_window(diffusers_python, tmp_path):
    """Compiled during load; inductor's and Triton's caches live under the cache dir, so the
    second run of the same configuration finds them warm."""
    from workers.contract.inputs import pinned_inputs

    dig = pinned_inputs(64).digests()
    matrix = tmp_path / "compile.toml"
    matrix.write_text(RESILIENCE.format(latent=dig["latent"], text=dig["text_embedding"])
                      .replace('precision = "fp32"', 'precision = "fp32"\ncompile = "default"'))
    cache = tmp_path / "cache"
    for state in ("cold", "warm"):
        p = subprocess.run([str(BIN / "worker"), "--cell", "cpu", "--matrix", str(matrix), "--iterations", "3"],
                           capture_output=True, text=True, timeout=900, cwd=REPO,
                           env={**os.environ, "CDB_CACHE_DIR": str(cache)})
        assert p.returncode == 0, p.stderr[-3000:]
        assert "'compile': 'default'" in p.stdout and "'compile_s': " in p.stdout
        assert f"'compile_cache': '{state}'" in p.stdout
        assert p.stdout.count("  iteration ") == 3 and "finite=True" in p.stdout
    [folder] = (cache / "torch-compile").iterdir()
    assert any((folder / "inductor").rglob("*.py"))

