"""The node meter broker, `sudo orchestrate broker`, as a Mac fleet node would run it: root with
SUDO_UID naming a real unprivileged user this test creates, a root-owned stand-in powermetrics
as its `broker.POWERMETRICS`, and the user's own processes (a venv of the system Python they can
read) reaching it through CDB_BROKER_SOCKET, without sudo."""

import json
import os
import pwd
import signal
import socket
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from conftest import (
    AS_ROOT_WITH_A_USER,
    BIN,
    REPO,
    fake_worker_matrix,
    only_session,
    root_powermetrics,
    start_broker,
    unprivileged_user,
    user_venv,
)

REFUSED = "error: the meter broker runs as root under sudo, for the user who will use it: sudo orchestrate broker\n"
# A client as the user: one powermetrics through the broker CDB_BROKER_SOCKET names, two of its
# documents read, then held until a line on stdin, then stopped.
CLIENT = """
import json, os, sys
from orchestrator.energy.meters import broker
c = broker.client()
pid, out, err = c.start(20, list(broker.SAMPLERS))
data = b""
while data.count(b"</plist>") < 2 and (chunk := os.read(out, 1 << 16)):
    data += chunk
print(json.dumps({"broker_pid": c.pid, "where": c.where, "powermetrics": c.powermetrics, "meter_pid": pid,
                  "documents": data.count(b"</plist>")}), flush=True)
sys.stdin.readline()
try:
    print(json.dumps({"stop": c.stop(), "uids": os.getresuid()}), flush=True)
except (broker.BrokerError, OSError) as e:
    print(json.dumps({"stop_error": str(e)}), flush=True)
"""


@pytest.fixture(scope="module")
def node(shared):
    """The user, their interpreter, and the stand-in powermetrics with the file of its uids."""
    user = unprivileged_user()
    python = user_venv(shared)
    meter, ids = root_powermetrics(shared, python)
    return SimpleNamespace(user=user, python=python, meter=meter, ids=ids, folder=shared)


def as_user(node, code: str, sock: Path, user: pwd.struct_passwd | None = None, **kwargs) -> subprocess.Popen:
    user = user or node.user
    return subprocess.Popen([str(node.python), "-c", code], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(node.folder),
                                 "CDB_BROKER_SOCKET": str(sock)},
                            cwd=node.folder, text=True, **kwargs)


def holding(client: subprocess.Popen) -> dict:
    """What CLIENT says once it holds its powermetrics."""
    assert client.stdout is not None
    line = client.stdout.readline()
    assert line, client.communicate()
    return json.loads(line)


def terminate(broker: subprocess.Popen) -> tuple[int, str]:
    broker.send_signal(signal.SIGTERM)
    out, err = broker.communicate(timeout=60)
    return broker.returncode, out + err


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def without_sudo() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}


@pytest.mark.unit
def test_outside_sudo_the_broker_is_refused_in_one_line(tmp_path):
    p = subprocess.run([str(BIN / "orchestrate"), "broker", "--socket", str(tmp_path / "broker.sock")],
                       env=without_sudo(), capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (2, "", REFUSED)
    assert not (tmp_path / "broker.sock").exists()


@pytest.mark.slow
@AS_ROOT_WITH_A_USER
def test_two_users_clients_each_get_their_own_powermetrics_and_sigterm_ends_them(node):
    folder = node.folder / "run"
    sock = folder / "broker.sock"
    broker = start_broker(node.python, node.meter, sock, node.user)
    try:
        for path, mode in ((folder, 0o700), (sock, 0o600)):
            st = path.lstat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (node.user.pw_uid, node.user.pw_gid, mode)
        assert stat.S_ISSOCK(sock.lstat().st_mode)
        clients = [as_user(node, CLIENT, sock, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for _ in range(2)]
        held = [holding(c) for c in clients]  # both hold one now
        for h in held:
            assert h["documents"] == 2 and h["powermetrics"] == str(node.meter)
            assert h["where"] == f"the meter broker at {sock}" and h["broker_pid"] == broker.pid  # SO_PEERCRED
            assert psutil.Process(h["meter_pid"]).ppid() == broker.pid
        assert held[0]["meter_pid"] != held[1]["meter_pid"]
        doctor = as_user(node, "import json; from orchestrator.doctor import node_broker; print(json.dumps(node_broker()))",
                         sock, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = doctor.communicate(timeout=60)
        assert json.loads(out) == {"socket": str(sock), "answers": True, "pid": broker.pid,
                                   "powermetrics": str(node.meter)}, err
        out, err = clients[0].communicate("\n", timeout=60)
        assert json.loads(out) == {"stop": [-signal.SIGTERM, False], "uids": [node.user.pw_uid] * 3}, err
        assert gone(held[0]["meter_pid"])
        assert not gone(held[1]["meter_pid"])  # the other client's is untouched
        code, output = terminate(broker)  # while the second client still holds its powermetrics
        assert code == 0 and "Traceback" not in output, output
        assert not os.path.lexists(sock) and gone(held[1]["meter_pid"])
        out, err = clients[1].communicate("\n", timeout=60)
        assert "stop_error" in json.loads(out), (out, err)  # the broker is gone, and its client is told so
        assert set(node.ids.read_text().split("\n")) - {""} == {"0 0 0"}  # powermetrics ran as root
    finally:
        if broker.poll() is None:
            broker.kill()


@pytest.mark.slow
@AS_ROOT_WITH_A_USER
def test_a_stranger_is_refused_even_where_the_socket_lets_them_in(node):
    sock = node.folder / "stranger" / "broker.sock"
    broker = start_broker(node.python, node.meter, sock, node.user)
    try:
        sock.parent.chmod(0o755)  # as if the folder and socket had been opened to all: the uid check still holds
        sock.chmod(0o666)
        stranger = unprivileged_user("cdb-broker-stranger")
        # the refusal comes at once, before any request: a request sent after it may meet a closed socket
        code = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                "print(s.makefile('rb').read().decode(), end='')")
        p = as_user(node, code.replace("sys.argv[1]", repr(str(sock))), sock, stranger,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=60)
        assert json.loads(out) == {"ok": False, "error": f"uid {stranger.pw_uid} may not use this meter broker"}, err
    finally:
        terminate(broker)


@pytest.mark.slow
@AS_ROOT_WITH_A_USER
def test_what_is_at_the_socket_path_is_checked_before_listening(node):
    user = node.user
    run = [str(node.python), "-c", "from orchestrator.cli import main; main()", "broker", "--socket"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SUDO_UID": str(user.pw_uid), "SUDO_GID": str(user.pw_gid)}

    def refused(sock: Path, env: dict[str, str] = env, **kwargs) -> str:
        p = subprocess.run([*run, str(sock)], env=env, capture_output=True, text=True, timeout=60, **kwargs)
        assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, p
        return p.stderr

    assert refused(node.folder / "x.sock", {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}) == REFUSED  # root alone
    assert refused(node.folder / "x.sock", user=user.pw_uid, group=user.pw_gid, extra_groups=[]) == REFUSED
    # the test's folder is root's, mode 0755: not a broker's folder, and never chowned
    assert "is not a meter broker's folder" in refused(node.folder / "x.sock")
    assert node.folder.stat().st_uid == 0
    assert "is too long for a Unix socket (at most 103 bytes)" in refused(node.folder / ("a" * 100) / "x.sock")
    assert not (node.folder / ("a" * 100)).exists()
    link = node.folder / "link"
    link.symlink_to(node.folder)
    assert "is not a folder (a link is not followed)" in refused(link / "x.sock")
    mine = node.folder / "mine"
    mine.mkdir(mode=0o700)
    os.chown(mine, user.pw_uid, user.pw_gid)
    (mine / "file").write_text("")
    assert "is not a meter broker's socket" in refused(mine / "file")
    stale = socket.socket(socket.AF_UNIX)  # a socket left by a broker that died: nobody listens
    stale.bind(str(mine / "broker.sock"))
    stale.close()
    os.chown(mine / "broker.sock", user.pw_uid, user.pw_gid)
    broker = start_broker(node.python, node.meter, mine / "broker.sock", user)  # replaces it
    try:
        assert f"a meter broker already listens at {mine / 'broker.sock'}" in refused(mine / "broker.sock")
    finally:
        assert terminate(broker)[0] == 0


@pytest.mark.slow
@AS_ROOT_WITH_A_USER
def test_a_session_without_sudo_records_energy_through_the_node_broker(node):
    sock = node.folder / "session" / "broker.sock"
    work = node.folder / "work"
    work.mkdir()
    os.chown(work, node.user.pw_uid, node.user.pw_gid)
    worker = node.folder / "worker-python"
    worker.write_text(f'#!/bin/sh\nexec "{node.python}" "{REPO / "tests" / "fakes" / "fake_worker.py"}" "$@"\n')
    worker.chmod(0o755)
    matrix = fake_worker_matrix(node.folder / "matrix.toml", 2, 'meter = "powermetrics"\ninterval_ms = 20\nbaseline_s = 0.5')
    broker = start_broker(node.python, node.meter, sock, node.user)
    try:
        p = subprocess.run([str(node.python), "-c", "from orchestrator.cli import main; main()", str(matrix),
                            "--out", str(work / "out"), "--env", f"diffusers={worker}"],
                           user=node.user.pw_uid, group=node.user.pw_gid, extra_groups=[], cwd=work,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(work),
                                "CDB_CACHE_DIR": str(work / "cache"), "FAKE_MODE": "ok", "CDB_BROKER_SOCKET": str(sock)},
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    finally:
        assert terminate(broker)[0] == 0
    d = only_session(work / "out")
    runs = [json.loads(ln) for ln in (d / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2 and all(r["status"] == "ok" and r["worker_uid"] == node.user.pw_uid for r in runs)
    assert all(r["energy_per_step_j"] is not None and r["meter_exit"] == "stopped" for r in runs), runs
    power = json.loads((d / "session.json").read_text())["power"]
    assert power["meter_reason"].endswith(f"{node.meter} through the meter broker at {sock}"), power["meter_reason"]
    assert list(power["meter_versions"].values()) == [
        f"{node.meter} (cpu_power,gpu_power,ane_power,thermal, -i 20) through the meter broker at {sock}"]
    assert "0 0 0" in node.ids.read_text()
