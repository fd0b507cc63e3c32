"""A session over a local Ray cluster, through the CLI as a user runs it: `uv run --extra fleet
orchestrate ... --ray local:2`, so this process never imports Ray. The fault tests kill a real
node: its raylet and every process under it."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import (
    AS_ROOT_WITH_A_USER,
    REPO,
    fake_worker_matrix,
    only_session,
    root_powermetrics,
    stand_in,
    start_broker,
    unprivileged_user,
)

pytestmark = pytest.mark.fleet
UV = shutil.which("uv") or str(Path(sys.executable).parent / "uv")


def fleet(*args: str, env: dict[str, str], nodes: int = 2) -> subprocess.Popen:
    return subprocess.Popen([UV, "run", "--locked", "--extra", "fleet", "orchestrate", *args, "--ray", f"local:{nodes}"],
                            cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(p: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out + err


def lines(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "runs.jsonl").read_text().splitlines()]


@pytest.fixture
def fake(tmp_path):
    """A fake-worker matrix of 3 runs and what its sessions need: (matrix, --env, environment)."""
    matrix = fake_worker_matrix(tmp_path / "m.toml", runs=3, power='meter = "none"')
    worker = stand_in(tmp_path / "fake-python", REPO / "tests" / "fakes" / "fake_worker.py")
    env = {"CDB_CACHE_DIR": str(tmp_path / "cache"), "FAKE_HOLD": str(tmp_path / "hold")}
    return matrix, f"diffusers={worker}", env


def kill_node_of(pid: int) -> None:
    """SIGKILL the node whose process tree holds `pid`: its raylet and everything under it."""
    raylet = psutil.Process(pid)
    while raylet.name() != "raylet":
        raylet = raylet.parent()
        assert raylet is not None, f"no raylet above {pid}"
    doomed = [*raylet.children(recursive=True), raylet]
    for p in doomed:
        p.send_signal(signal.SIGKILL)


def run_killing_a_node(matrix: Path, worker: str, env: dict[str, str], out: Path, nodes: int = 2) -> tuple[int, str]:
    """A fleet session whose run 1 holds in its timed loop until its node is killed."""
    p = fleet(str(matrix), "--out", str(out), "--env", worker, env={**env, "FAKE_MODES": "run-001=hold"}, nodes=nodes)
    hold = Path(env["FAKE_HOLD"])
    deadline = time.monotonic() + 300
    while not (hold.is_file() and hold.read_text()):
        assert p.poll() is None and time.monotonic() < deadline, finish(p)[1][-3000:]
        time.sleep(0.2)
    kill_node_of(int(hold.read_text()))
    return finish(p)


def test_runs_spread_over_the_nodes_and_a_cell_no_node_matches_is_unsupported(fake, tmp_path):
    matrix, worker, env = fake
    text = matrix.read_text()
    cell = text[text.index("[[cells]]"):]
    matrix.write_text(text.replace('precision = "fp32"\nresolution = 64',
                                   'precision = "fp32"\nresolution = 64\nhosts = { hostname = "*" }')
                      + cell.replace('id = "fake"', 'id = "elsewhere"') + 'hosts = { chip = "Apple M*" }\n')
    code, output = finish(fleet(str(matrix), "--out", str(tmp_path / "out"), "--env", worker, env=env))
    assert code == 0, output[-3000:]
    d = only_session(tmp_path / "out")
    runs = lines(d)
    session = json.loads((d / "session.json").read_text())
    hosts = session["hosts"]
    assert len(hosts) == 2 and all("/node-" in k for k in hosts), hosts
    fake_runs = [r for r in runs if r["cell_id"] == "fake"]
    assert [r["status"] for r in fake_runs] == ["ok"] * 3
    assert {r["host"] for r in fake_runs} == set(hosts)  # the first two runs start together, one per node
    assert all(r["attempt"] == 1 for r in fake_runs)
    elsewhere = [r for r in runs if r["cell_id"] == "elsewhere"]
    assert [r["status"] for r in elsewhere] == ["unsupported"] * 3
    assert all("no node of the cluster matches hosts { chip = 'Apple M*' }" in r["failure_reason"]
               for r in elsewhere)
    for r in fake_runs:
        assert (d / r["samples_file"]).is_file() and (d / r["output_file"]).is_file() and (d / r["log_file"]).is_file()
    for key, entry in hosts.items():
        assert entry["host"]["hostname"] == key.split("/")[0]
        assert entry["harness"]["git_commit"] and entry["env_lock_sha256"]
        assert session["session_id"] in entry["sessions"]
    report = (d / "report.md").read_text()
    assert all(f"| {key} | fake |" in report for key in hosts)


def test_a_node_killed_mid_run_fails_that_attempt_and_the_run_goes_to_the_other(fake, tmp_path):
    matrix, worker, env = fake
    code, output = run_killing_a_node(matrix, worker, env, tmp_path / "out")
    assert code == 0, output[-3000:]
    d = only_session(tmp_path / "out")
    runs = lines(d)
    lost, retried = [r for r in runs if r["run_index"] == 1]
    assert lost["status"] == "failed" and lost["node_lost"] is True and lost["attempt"] == 1
    assert lost["host"] in lost["failure_reason"] and "was lost during the run" in lost["failure_reason"]
    assert "to be tried again on another node" in lost["failure_reason"]
    assert retried["status"] == "ok" and retried["attempt"] == 2 and retried["host"] != lost["host"]
    assert sorted((r["run_index"], r["status"]) for r in runs if r is not lost) == [(0, "ok"), (1, "ok"), (2, "ok")]
    session = json.loads((d / "session.json").read_text())
    assert session["status"] == "complete"
    assert "lost" in session["hosts"][lost["host"]]["sessions"][session["session_id"]]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["cells"][0]["n_ok"] == 3 and summary["cells"][0]["n_failed"] == 0


def test_resume_runs_again_only_the_run_whose_node_was_lost(fake, tmp_path, request):
    """...and the resume's nodes remove the scratch folders (node session, fork server socket)
    the killed node left in the temp dir."""
    matrix, worker, env = fake
    matrix.write_text(matrix.read_text().replace("[[cells]]", "[fleet]\nretries = 0\n[[cells]]"))
    tmp = Path(tempfile.mkdtemp(prefix="t"))  # short: a fork server's socket path lies in it
    env = {**env, "TMPDIR": str(tmp), "RAY_TMPDIR": tempfile.gettempdir()}
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    code, output = run_killing_a_node(matrix, worker, env, tmp_path / "out")
    assert code == 1, output[-3000:]
    left = sorted(p.name.rsplit("-", 3)[0] for p in tmp.glob("cdb-*"))
    assert left == ["cdb-fleet-node", "cdb-fork"], left  # the killed node's; the other node removed its own
    d = only_session(tmp_path / "out")
    before = lines(d)
    (lost,) = [r for r in before if r["status"] == "failed"]
    assert lost["node_lost"] and "no retries left" in lost["failure_reason"]
    code, output = finish(fleet(str(matrix), "--resume", str(d), "--env", worker, env=env))
    assert code == 0, output[-3000:]
    after = lines(d)
    assert after[:len(before)] == before
    (again,) = after[len(before):]
    assert (again["cell_id"], again["run_index"], again["attempt"], again["status"]) == (
        lost["cell_id"], lost["run_index"], 2, "ok")
    session = json.loads((d / "session.json").read_text())
    assert session["status"] == "complete" and len(session["resumes"]) == 1
    assert any(k.endswith("resume 1") for h in session["hosts"].values() for k in h["sessions"])
    assert not list(tmp.glob("cdb-*"))


def test_the_quick_example_over_two_nodes(diffusers_python, mlx_python, cache_dir, tmp_path):
    code, output = finish(fleet(str(REPO / "examples" / "quick.toml"), "--out", str(tmp_path / "out"),
                                env={"CDB_CACHE_DIR": str(cache_dir)}), timeout=900)
    assert code == 0, output[-3000:]
    d = only_session(tmp_path / "out")
    runs = lines(d)
    assert len(runs) == 9 and all(r["status"] == "ok" for r in runs), [r["failure_reason"] for r in runs]
    hosts = json.loads((d / "session.json").read_text())["hosts"]
    assert len(hosts) == 2 and {r["host"] for r in runs} == set(hosts)
    report = (d / "report.md").read_text()
    for cell in ("diffusers-cpu-fp32", "diffusers-cpu-bf16", "mlx-cpu-fp32"):
        assert any(f"| {key} | {cell} |" in report for key in hosts), cell


def test_an_interrupted_fleet_session_keeps_its_finished_runs_and_resumes(fake, tmp_path):
    matrix, worker, env = fake
    out = tmp_path / "out"
    p = fleet(str(matrix), "--out", str(out), "--env", worker, env={**env, "FAKE_MODES": "run-001=hold"})
    deadline = time.monotonic() + 300
    while not ((runs := list(out.glob("*/runs.jsonl"))) and len(runs[0].read_text().splitlines()) == 2):
        assert p.poll() is None and time.monotonic() < deadline, finish(p)[1][-3000:]
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)  # run 1 holds on its node; the other two are recorded
    code, output = finish(p)
    with contextlib.suppress(ProcessLookupError):  # the held worker lives until its node goes: the test ends it
        os.kill(int(Path(env["FAKE_HOLD"]).read_text()), signal.SIGKILL)
    assert code == 130, output[-3000:]
    d = only_session(out)
    assert f"continue with: uv run --extra fleet orchestrate {matrix} --resume {d} --ray local:2" in output
    before = lines(d)
    assert sorted(r["run_index"] for r in before) == [0, 2] and all(r["status"] == "ok" for r in before)
    assert json.loads((d / "session.json").read_text())["status"] == "interrupted"
    code, output = finish(fleet(str(matrix), "--resume", str(d), "--env", worker, env=env))
    assert code == 0, output[-3000:]
    after = lines(d)
    assert after[:2] == before and [(r["run_index"], r["status"], r["attempt"]) for r in after[2:]] == [(1, "ok", 1)]


def test_runs_left_without_a_live_node_fail_as_lost_and_a_resume_runs_them(fake, tmp_path):
    matrix, worker, env = fake
    code, output = run_killing_a_node(matrix, worker, env, tmp_path / "out", nodes=1)
    assert code == 1, output[-3000:]
    d = only_session(tmp_path / "out")
    before = lines(d)
    lost = [r for r in before if r["status"] != "ok"]
    assert lost and all(r["status"] == "failed" and r["node_lost"] for r in lost), before
    assert [r["attempt"] for r in lost if r["run_index"] == 1] == [1, 2]
    assert "no live node is left to run it (lost: vm)" in lost[-1]["failure_reason"]
    code, output = finish(fleet(str(matrix), "--resume", str(d), "--env", worker, env=env))
    assert code == 0, output[-3000:]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["cells"][0]["n_ok"] == 3 and summary["cells"][0]["n_failed"] == 0


def test_each_host_runs_every_cells_runs_on_every_node(tmp_path):
    matrix = fake_worker_matrix(tmp_path / "m.toml", runs=2, power='meter = "none"')
    matrix.write_text(matrix.read_text().replace("[[cells]]", '[fleet]\nreplicate = "each-host"\n[[cells]]'))
    worker = stand_in(tmp_path / "fake-python", REPO / "tests" / "fakes" / "fake_worker.py")
    code, output = finish(fleet(str(matrix), "--out", str(tmp_path / "out"), "--env", f"diffusers={worker}",
                                env={"CDB_CACHE_DIR": str(tmp_path / "cache")}))
    assert code == 0, output[-3000:]
    d = only_session(tmp_path / "out")
    runs = lines(d)
    assert sorted((r["run_index"], r["host"], r["status"]) for r in runs) == [
        (0, "vm/node-1", "ok"), (1, "vm/node-1", "ok"), (2, "vm/node-2", "ok"), (3, "vm/node-2", "ok")]
    report = (d / "report.md").read_text()
    assert "| vm/node-1 | fake | 2/0 |" in report and "| vm/node-2 | fake | 2/0 |" in report
    assert "each-host: fake: 2 run(s) on each of vm/node-1, vm/node-2" in output


def test_each_host_keeps_a_lost_nodes_run_with_that_node_and_a_resume_runs_it_there(fake, tmp_path):
    matrix, worker, env = fake
    matrix.write_text(matrix.read_text().replace("runs = 3", "runs = 2")
                      .replace("[[cells]]", '[fleet]\nreplicate = "each-host"\n[[cells]]'))
    code, output = run_killing_a_node(matrix, worker, env, tmp_path / "out")
    assert code == 1, output[-3000:]
    d = only_session(tmp_path / "out")
    (lost,) = [r for r in lines(d) if r["status"] != "ok"]
    assert (lost["run_index"], lost["host"], lost["node_lost"]) == (1, "vm/node-1", True)
    assert "each-host: its runs stay with it" in lost["failure_reason"]
    code, output = finish(fleet(str(matrix), "--resume", str(d), "--env", worker, env=env))
    assert code == 0, output[-3000:]
    again = lines(d)[-1]
    assert (again["run_index"], again["host"], again["attempt"], again["status"]) == (1, "vm/node-1", 2, "ok")


def _ray_start(*args: str) -> subprocess.Popen:
    """`ray start ... --block` from the checkout's environment with the fleet extra, as docs/fleet.md says."""
    return subprocess.Popen([UV, "run", "--locked", "--extra", "fleet", "ray", "start", *args, "--block",
                             "--num-cpus", "1", "--resources", '{"cdb-node": 1}'], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})


def test_a_running_cluster_at_its_address(fake, tmp_path):
    matrix, worker, env = fake
    port = 6390 + os.getpid() % 500
    started = [_ray_start("--head", "--port", str(port), "--include-dashboard", "false")]
    try:
        deadline = time.monotonic() + 120
        while True:  # the head's GCS takes its port once it is up
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert started[0].poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        started.append(_ray_start("--address", f"127.0.0.1:{port}"))
        count = (f"import ray; ray.init(address='127.0.0.1:{port}', log_to_driver=False, logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        while subprocess.run([UV, "run", "--locked", "--extra", "fleet", "python", "-c", count], cwd=REPO,
                             capture_output=True, text=True, timeout=120).stdout.strip() != "2":
            assert started[1].poll() is None and time.monotonic() < deadline, "the second node did not join"
            time.sleep(1)
        p = subprocess.run([UV, "run", "--locked", "--extra", "fleet", "orchestrate", str(matrix), "--out",
                            str(tmp_path / "out"), "--env", worker, "--ray", f"127.0.0.1:{port}"], cwd=REPO,
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    finally:
        for proc in started:  # each `ray start --block` and every process it started, by id
            tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
            for q in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    q.kill()
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    d = only_session(tmp_path / "out")
    runs = lines(d)
    hosts = json.loads((d / "session.json").read_text())["hosts"]
    assert [r["status"] for r in runs] == ["ok"] * 3
    assert len(hosts) == 2 and {r["host"] for r in runs} == set(hosts)  # the first two runs start together


def test_an_address_where_no_cluster_answers_is_one_line(fake, tmp_path):
    matrix, worker, env = fake
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([UV, "run", "--locked", "--extra", "fleet", "orchestrate", str(matrix), "--out",
                        str(tmp_path / "out"), "--env", worker, "--ray", f"127.0.0.1:{port}"], cwd=REPO,
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == (
        f"error: --ray 127.0.0.1:{port}: no Ray cluster answers there (Connection refused); start its head with "
        "`ray start --head`, or run a local one with --ray local:N")
    assert not (tmp_path / "out").exists()


@AS_ROOT_WITH_A_USER
def test_the_nodes_actors_record_energy_through_the_machines_meter_broker(tmp_path):
    """A Mac fleet's route to powermetrics: `sudo orchestrate broker` on the machine, Ray started
    without sudo. Both local nodes' actors inherit the driver's CDB_BROKER_SOCKET and reach it
    (the session runs as root here, which the broker lets in besides its user)."""
    python = Path(sys.executable)
    meter, ids = root_powermetrics(tmp_path, python)
    sock = tmp_path / "run" / "broker.sock"
    broker = start_broker(python, meter, sock, unprivileged_user())
    matrix = fake_worker_matrix(tmp_path / "m.toml", runs=3,
                                power='meter = "powermetrics"\ninterval_ms = 20\nbaseline_s = 0.5')
    worker = stand_in(tmp_path / "fake-python", REPO / "tests" / "fakes" / "fake_worker.py")
    try:
        code, output = finish(fleet(str(matrix), "--out", str(tmp_path / "out"), "--env", f"diffusers={worker}",
                                    env={"CDB_CACHE_DIR": str(tmp_path / "cache"), "CDB_BROKER_SOCKET": str(sock)}))
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.communicate(timeout=60)
    assert code == 0 and broker.returncode == 0, output[-3000:]
    d = only_session(tmp_path / "out")
    runs = lines(d)
    assert [r["status"] for r in runs] == ["ok"] * 3 and len({r["host"] for r in runs}) == 2
    assert all(r["energy_per_step_j"] is not None and r["meter_exit"] == "stopped" for r in runs), runs
    assert f"{meter} (cpu_power,gpu_power,ane_power,thermal, -i 20) through the meter broker at {sock}" \
        in (d / "session.json").read_text()
    assert set(ids.read_text().split("\n")) - {""} == {"0 0 0"}


def test_gpu_isolated_runs_share_a_node_one_per_gpu_and_a_whole_node_run_runs_alone(tmp_path):
    """One node with two simulated GPUs (CDB_FLEET_LOCAL_GPUS): the fake worker records the GPU it
    was bound to and its timed window, so overlaps are read from the runs themselves."""
    matrix = fake_worker_matrix(tmp_path / "m.toml", runs=2, power='meter = "auto"', order="sequential")
    text = matrix.read_text().replace("[power]", "min_window_s = 6\n[power]")  # margin: the two slots' runs start seconds apart on a busy host
    head, cell = text[:text.index("[[cells]]")], text[text.index("[[cells]]"):]
    gpu = cell.replace('id = "fake"', 'id = "gpu"').replace('device = "cpu"', 'device = "cuda"') + 'isolation = "gpu"\n'
    matrix.write_text(head + gpu + cell)  # sequential: both GPU runs, then the whole-node runs, which must wait
    worker = stand_in(tmp_path / "fake-python", REPO / "tests" / "fakes" / "fake_worker.py")
    (traces := tmp_path / "traces").mkdir()
    code, output = finish(fleet(str(matrix), "--out", str(tmp_path / "out"), "--env", f"diffusers={worker}", nodes=1,
                                env={"CDB_CACHE_DIR": str(tmp_path / "cache"), "CDB_FLEET_LOCAL_GPUS": "2",
                                     "FAKE_TRACE": str(traces)}))
    assert code == 0, output[-3000:]
    d = only_session(tmp_path / "out")
    runs = {f"{r['cell_id']}/run-{r['run_index']:03d}": r for r in lines(d)}
    seen = [json.loads(p.read_text()) for p in traces.iterdir()]
    window = {t["label"]: t for t in seen if t["label"] in runs}  # the reference's worker is traced too
    assert sorted(window) == ["fake/run-000", "fake/run-001", "gpu/run-000", "gpu/run-001"], seen
    assert all(r["status"] == "ok" for r in runs.values())
    hosts = json.loads((d / "session.json").read_text())["hosts"]
    assert sorted(hosts) == ["vm", "vm/gpu-0", "vm/gpu-1"], hosts
    gpu_runs = [runs["gpu/run-000"], runs["gpu/run-001"]]
    assert sorted(r["gpu"] for r in gpu_runs) == [0, 1]
    for r in gpu_runs:
        t = window[f"gpu/run-{r['run_index']:03d}"]
        assert r["host"] == f"vm/gpu-{r['gpu']}" and hosts[r["host"]]["gpu"]["index"] == r["gpu"]
        assert (t["cuda_visible_devices"], t["cuda_device_order"]) == (str(r["gpu"]), "PCI_BUS_ID")
    a, b = (window[f"gpu/run-00{i}"] for i in (0, 1))
    assert max(a["start_ns"], b["start_ns"]) < min(a["end_ns"], b["end_ns"]), "the two GPU runs did not overlap"
    for label in ("fake/run-000", "fake/run-001"):
        assert runs[label]["host"] == "vm" and runs[label]["gpu"] is None
        mine = window[label]
        for other in window.values():
            if other is not mine:
                assert other["end_ns"] <= mine["start_ns"] or mine["end_ns"] <= other["start_ns"], (label, other)
    assert "| vm/gpu-0 | gpu |" in (d / "report.md").read_text()
