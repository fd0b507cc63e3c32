"""Workers forked from an env's fork server, against the real server (workers/forkserver.py)
forking the fake worker's run: fresh state per run, the same failure reasons as a spawned worker,
and a server that dies or never starts."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import cli, fake_worker_matrix, only_session, stand_in

from orchestrator.config.envs import Env
from orchestrator.config.matrix import load_matrix
from orchestrator.console import Display
from orchestrator.energy.arithmetic import Interval
from orchestrator.energy.meters import Meters
from orchestrator.energy.meters.base import Availability, Meter, MeterRecord, MeterSpec
from orchestrator.errors import UserError
from orchestrator.run import session as session_mod
from orchestrator.run.forkserver import ForkServer, ForkServerError, chosen
from orchestrator.run.session import Session
from orchestrator.run.worker_client import WorkerRun, _stop, run_worker, worker_command
from tests.test_runner import FAKE, _setup, fake_env, fake_mode  # noqa: F401  (fixtures)
from workers.contract.messages import Ready


@pytest.fixture
def server(fake_env, tmp_path):  # noqa: F811
    s = ForkServer(fake_env, [], tmp_path / "forkserver.log")
    yield s
    s.close()


def _run(env, server, tmp_path, label="t/run-000", timeout_s=20.0):
    return WorkerRun(env, _setup(), label=label, log_path=tmp_path / "run.log", timeout_s=timeout_s, forkserver=server)


def test_each_forked_worker_starts_from_the_servers_state(fake_env, server, tmp_path, fake_mode):  # noqa: F811
    fake_mode("count")
    ready = server.start()
    pids = set()
    for i in range(3):
        with _run(fake_env, server, tmp_path, label=f"t/run-{i:03d}") as run:
            assert isinstance(run.start(), Ready)
            run.measure()
        o = run.outcome
        assert o.status == "ok" and o.exit_code == 0 and o.worker_start == "forkserver"
        assert o.ready is not None and o.ready.realized["runs_in_process"] == 1  # a leak would count 2, 3
        assert o.hello is not None and o.hello.pid != ready.pid
        pids.add(o.hello.pid)
    assert len(pids) == 3


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["crash", "selfkill", "error", "bad_exit", "garbage", "iter_empty"])
def test_a_forked_worker_fails_as_a_spawned_one_does(fake_env, server, tmp_path, fake_mode, mode):  # noqa: F811
    fake_mode(mode)
    spawned = run_worker(fake_env, _setup(), label="t", log_path=tmp_path / "spawn.log", timeout_s=20)
    with _run(fake_env, server, tmp_path) as run:
        if isinstance(run.start(), Ready):
            run.measure()
    forked = run.outcome
    assert forked.status == spawned.status == "failed"
    if mode in ("crash", "selfkill", "bad_exit"):  # elsewhere the run is stopped while the worker may be exiting
        assert forked.exit_code == spawned.exit_code
    # where a worker that exits early is caught (writing its setup, reading its ready) is a race either way
    assert forked.reason is not None and spawned.reason is not None
    assert forked.reason.split(" before ")[0] == spawned.reason.split(" before ")[0]
    assert forked.reason.split(" (log: ")[1:] == spawned.reason.split(" (log: ")[1:]


@pytest.mark.slow
def test_a_hung_forked_worker_is_stopped_at_the_timeout(fake_env, server, tmp_path, fake_mode):  # noqa: F811
    fake_mode("hang")
    with _run(fake_env, server, tmp_path, timeout_s=1.0) as run:
        assert run.start() is None
    o = run.outcome
    assert o.status == "failed" and "timeout" in (o.reason or "") and o.exit_code == -signal.SIGTERM
    assert o.hello is not None
    with pytest.raises(ProcessLookupError):
        os.kill(o.hello.pid, 0)


def test_a_worker_stopped_right_after_its_fork_is_ended(fake_env, server, tmp_path, fake_mode):  # noqa: F811
    """SIGTERM may end a run between the server naming its worker and the worker making its own
    process group; the orchestrator hung there, waiting on a worker that waited on its stdin."""
    fake_mode("ok")
    server.start()
    codes: list[int | None] = []

    def fork_and_stop() -> None:
        with open(tmp_path / "run.log", "ab") as log:
            for _ in range(20):  # the window is a few microseconds wide; the old code hung within 20 every time
                worker = server.fork(worker_command(fake_env, "t")[1:], fake_env.worker_environ(), log, 20.0)
                _stop(worker)
                codes.append(worker.returncode)

    thread = threading.Thread(target=fork_and_stop, daemon=True)
    thread.start()
    thread.join(timeout=120)  # a hang detector, not a time limit: the loop takes 2 s
    assert not thread.is_alive(), f"stopping a just-forked worker hung after {len(codes)} workers"
    assert len(codes) == 20 and all(code is not None and code != 0 for code in codes)
    pid = server.ready.pid if server.ready else None
    with _run(fake_env, server, tmp_path) as run:  # no stopped child took the server's way out with its socket
        assert isinstance(run.start(), Ready)
        run.measure()
    assert run.outcome.status == "ok" and server.ready is not None and server.ready.pid == pid


def test_a_server_that_died_is_started_again(fake_env, server, tmp_path, fake_mode):  # noqa: F811
    fake_mode("ok")
    first = server.start()
    os.kill(first.pid, signal.SIGKILL)
    with _run(fake_env, server, tmp_path) as run:
        assert isinstance(run.start(), Ready)
        run.measure()
    assert run.outcome.status == "ok"
    assert server.ready is not None and server.ready.pid != first.pid


def test_a_worker_whose_server_dies_mid_run_fails_with_the_reason(fake_env, server, tmp_path, fake_mode):  # noqa: F811
    fake_mode("ok")
    ready = server.start()
    with _run(fake_env, server, tmp_path) as run:
        assert isinstance(run.start(), Ready)
        os.kill(ready.pid, signal.SIGKILL)
        assert run.measure() is None
    o = run.outcome
    assert o.status == "failed" and o.reason is not None and "went down with its fork server, which died" in o.reason


@pytest.mark.slow
def test_a_killed_orchestrators_server_and_worker_leave_and_take_the_servers_folder(fake_env, tmp_path,  # noqa: F811
                                                                                     request):
    """A SIGKILLed orchestrator removes nothing: the server it left leaves and takes its socket and
    folder along, or every killed session would leave one behind for good, and the worker the
    server forked, stuck in its run, leaves too."""
    tmp = Path(tempfile.mkdtemp(prefix="t"))  # short: tmp_path leaves the socket's path too few bytes
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from pathlib import Path\nfrom orchestrator.config.envs import Env\n"
         "from orchestrator.run.forkserver import ForkServer\n"
         "from orchestrator.run.worker_client import worker_command\n"
         f"e = Env('fake', None, external_python=Path({str(fake_env.python)!r}))\n"
         f"s = ForkServer(e, [], Path({str(tmp_path / 'forkserver.log')!r}))\n"
         "print(s.start().pid, flush=True)\n"
         f"w = s.fork(worker_command(e, 't')[1:], e.worker_environ(), open({str(tmp_path / 'run.log')!r}, 'ab'), 20.0)\n"
         "print(w.pid, flush=True)\ntime.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp), "FAKE_MODE": "hang"})
    assert holder.stdout is not None
    assert holder.stdout.readline().strip().isdigit()
    worker = int(holder.stdout.readline())
    assert [p.name for p in tmp.iterdir()][0].startswith("cdb-fork-")
    holder.kill()
    holder.wait()
    deadline = time.monotonic() + 30  # a hang detector: the kernel signals the server, then its worker, at once
    while (list(tmp.iterdir()) or _running(worker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(tmp.iterdir())
    assert not _running(worker), "the forked worker outlived its server"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_temp_dir_too_long_for_the_socket_is_one_line_and_leaves_nothing(fake_env, server, tmp_path,  # noqa: F811
                                                                           monkeypatch):
    long = tmp_path / ("x" * (120 - len(str(tmp_path))))
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    with pytest.raises(ForkServerError, match=r"^the fork server's socket path in the temp dir would be 1[45][0-9] bytes, over the "
                                              r"10[37] a Unix socket's may have here: set TMPDIR to a shorter folder$"):
        server.launch()
    assert not list(long.iterdir())


def test_a_server_that_cannot_start_says_why(fake_env, server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FAKE_FORKSERVER", "crash")
    with pytest.raises(ForkServerError, match="the fork server exited with code 5 before it was ready"):
        server.start()


def test_auto_forks_on_linux_and_spawns_on_macos():
    assert chosen("auto", "linux")[0] == "forkserver"
    assert chosen("forkserver", "darwin") == ("spawn", chosen("auto", "darwin")[1].replace('"auto"', '"forkserver"'))
    assert chosen("spawn", "linux")[0] == "spawn"


@pytest.mark.slow
@pytest.mark.parametrize("server", ["ok", "crash"])
def test_a_session_records_how_each_worker_started(tmp_path, server):
    """Through the CLI: the fake worker's fork server forks every run's worker, and a server
    that cannot start leaves the session spawning its workers, said once with the reason."""
    worker = stand_in(tmp_path / "python", FAKE)
    matrix = fake_worker_matrix(tmp_path / "m.toml", 2, 'meter = "none"')
    p = cli(str(matrix), "--out", str(tmp_path / "out"), "--env", f"diffusers={worker}",
            env={"FAKE_MODE": "count", "FAKE_FORKSERVER": server})
    assert p.returncode == 0, p.stderr
    folder = only_session(tmp_path / "out")
    runs = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    session = json.loads((folder / "session.json").read_text())
    assert [r["status"] for r in runs] == ["ok", "ok"]
    assert all(r["realized"]["runs_in_process"] == 1 for r in runs)
    assert session["references"]["64"]["cached"] is False  # this fake worker's own, computed here
    if server == "ok":
        assert [r["worker_start"] for r in runs] == ["forkserver"] * 2
        assert session["references"]["64"]["worker_start"] == "forkserver"  # no second import for it
        assert session["worker_start"]["diffusers"]["mode"] == "forkserver"
        assert "fork server ready" in p.stdout + p.stderr
    else:
        assert [r["worker_start"] for r in runs] == ["spawn"] * 2
        assert session["references"]["64"]["worker_start"] == "spawn"
        why = session["worker_start"]["diffusers"]["why"]
        assert session["worker_start"]["diffusers"]["mode"] == "spawn" and "exited with code 5" in why
        assert (p.stdout + p.stderr).count("exited with code 5") == 1


class GateMeter(Meter):
    """A meter that opens the gate the fake server's import waits at when its first window (the
    session's idle-power window) starts, and notes when that was; its power is a steady 1 W."""

    name = "gate"

    def __init__(self, gate):
        self.gate, self.first_start_ns = gate, None

    def version(self):
        return "gate"

    def update_interval_s(self):
        return 0.01

    def start(self):
        if self.first_start_ns is None:
            self.first_start_ns = time.monotonic_ns()
            self.gate.touch()

    def stop(self):
        return self.peek()

    def peek(self):
        now = time.monotonic_ns()
        return MeterRecord(intervals=[Interval(now - 10_000_000, now, {"total": 0.01})])


@pytest.mark.slow
@pytest.mark.parametrize("sees_host", [False, True])
def test_the_imports_run_beside_the_idle_window_only_of_a_meter_blind_to_the_host(tmp_path, monkeypatch, sees_host):
    """The fork server is launched as the session starts. A meter that reads a GPU board alone
    (nvml) measures idle power while the server imports; one that sees the host's CPU (rapl,
    powermetrics) waits for the imports to end first, so they are not in its idle power."""
    gate, done = tmp_path / "gate", tmp_path / "imported"
    monkeypatch.setenv("FAKE_IMPORT_GATE", str(gate))
    monkeypatch.setenv("FAKE_IMPORT_DONE", str(done))
    monkeypatch.setenv("FAKE_IMPORT_WAIT_S", "2" if sees_host else "120")  # blind: the window opens the gate
    meter = GateMeter(gate)
    spec = MeterSpec("gate", available=lambda power: Availability(True, "test"), make=lambda power, index: meter,
                     sees_host=sees_host)
    monkeypatch.setattr(session_mod, "choose", lambda power: Meters(spec, "a test's meter", power=power))
    path = fake_worker_matrix(tmp_path / "m.toml", 1, "idle_s = 0.2\nbaseline_s = 0.1")
    path.write_text(path.read_text().replace("cooldown_s = 0", 'cooldown = "adaptive"\ncooldown_min_s = 0'))
    python = stand_in(tmp_path / "python", FAKE)
    envs = {"diffusers": Env("diffusers", None, external_python=python)}
    result = Session(load_matrix(path, set(envs)), envs, Display(quiet=True)).run(tmp_path / "out")
    assert result.n_ok == 1
    imported_ns = int(done.read_text())
    if sees_host:
        assert imported_ns < meter.first_start_ns
    else:
        assert meter.first_start_ns < imported_ns
    session = json.loads((result.dir.root / "session.json").read_text())
    assert session["worker_start"]["diffusers"]["mode"] == "forkserver"
    assert session["worker_start"]["diffusers"]["preloaded"] == ["gated_import"]


@pytest.mark.slow
def test_a_session_that_fails_before_its_record_stops_its_servers_and_leaves_no_folder(tmp_path, monkeypatch):
    """The servers are launched before the model is pinned: a model that does not match its
    sha256 ends the session with its one line, the still-importing server ended, no folder."""
    monkeypatch.setenv("FAKE_IMPORT_GATE", str(tmp_path / "gate"))
    monkeypatch.setenv("FAKE_IMPORT_DONE", str(tmp_path / "imported"))
    monkeypatch.setenv("FAKE_IMPORT_WAIT_S", "120")
    path = fake_worker_matrix(tmp_path / "m.toml", 1, 'meter = "none"')
    path.write_text(re.sub(r'sha256 = "[0-9a-f]{64}"', f'sha256 = "{"0" * 64}"', path.read_text(), count=1))
    envs = {"diffusers": Env("diffusers", None, external_python=stand_in(tmp_path / "python", FAKE))}
    with pytest.raises(UserError, match="sha256"):
        Session(load_matrix(path, set(envs)), envs, Display(quiet=True)).run(tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())
    assert not [c for c in _live_children() if "--forkserver" in c]


@pytest.mark.slow
def test_a_resumed_session_starts_fork_servers_only_for_envs_with_runs_left(tmp_path):
    """A resume whose runs are all recorded imports no toolchain: it starts no fork server, and
    the runs it keeps are the first session's."""
    path = fake_worker_matrix(tmp_path / "m.toml", 1, 'meter = "none"')
    envs = {"diffusers": Env("diffusers", None, external_python=stand_in(tmp_path / "python", FAKE))}
    first = Session(load_matrix(path, set(envs)), envs, Display(quiet=True))
    result = first.run(tmp_path / "out")
    assert result.n_ok == 1 and first.forkservers["diffusers"] is not None
    again = Session(load_matrix(path, set(envs)), envs, Display(quiet=True))
    resumed = again.run(tmp_path / "out", resume=result.dir)
    assert resumed.n_ok == 1 and again.forkservers == {} and again.worker_start == {}
    session = json.loads((result.dir.root / "session.json").read_text())
    assert len(session["resumes"]) == 1 and session["worker_start"]["diffusers"]["mode"] == "forkserver"


def _live_children():
    """The command lines of this process's live descendants; one that exits while they are read
    is not one of them."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.cmdline())
        except psutil.Error:
            continue
    return out
