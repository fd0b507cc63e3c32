"""Privilege separation, end to end, as `sudo orchestrate` runs it: root with SUDO_UID naming a
real unprivileged user this test creates. Only the meter broker and the powermetrics it starts
may run as root; the orchestrator, its workers and everything else run as that user, and every
file the session writes is theirs.

The stand-in powermetrics is a root-owned script in a folder the user cannot write, set as
`broker.POWERMETRICS` by the root process before it starts (docs/reliability.md says why only
that attribute can move it). Its interpreter and the orchestrator's are a venv of the system
Python that the user can read (this box's own Python lives under /root, which they cannot)."""

import json
import os
import shutil
import subprocess
import time

import psutil
import pytest
from conftest import (
    AS_ROOT_WITH_A_USER,
    REPO,
    fake_worker_matrix,
    only_session,
    root_powermetrics,
    unprivileged_user,
    user_venv,
)

pytestmark = [pytest.mark.slow, AS_ROOT_WITH_A_USER]


def _watch(proc: subprocess.Popen) -> dict[int, dict]:
    """Every process under `proc` (and it), with each command line and set of uids it was seen
    with, until it ends. A child seen between fork and exec still shows its parent's command line."""
    seen: dict[int, dict] = {}
    while proc.poll() is None:
        try:
            procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                uids, cmd = tuple(p.uids()), " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            entry = seen.setdefault(p.pid, {"cmds": [], "uids": [], "ppid": p.ppid()})
            for key, value in (("cmds", cmd), ("uids", uids)):
                if value and value not in entry[key]:  # an exiting process shows an empty command line
                    entry[key].append(value)
        time.sleep(0.02)
    return seen


def test_under_sudo_only_the_broker_and_powermetrics_run_as_root(shared):
    user = unprivileged_user()
    python = user_venv(shared)
    meter, ids = root_powermetrics(shared, python)
    shutil.copy(REPO / "tests" / "fakes" / "fake_worker.py", shared / "fake_worker.py")
    worker = shared / "worker-python"
    worker.write_text(f'#!/bin/sh\nexec "{python}" "{shared / "fake_worker.py"}" "$@"\n')
    worker.chmod(0o755)
    work = shared / "work"  # the user's own folder, as their checkout and home would be
    work.mkdir()
    os.chown(work, user.pw_uid, user.pw_gid)
    matrix = fake_worker_matrix(shared / "matrix.toml", 2, 'meter = "powermetrics"\ninterval_ms = 20\nbaseline_s = 0.5')
    start = (f"import orchestrator.energy.meters.broker as b; b.POWERMETRICS = {str(meter)!r}; "
             "from orchestrator.cli import main; main()")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SUDO_UID": str(user.pw_uid),
           "SUDO_GID": str(user.pw_gid), "SUDO_USER": user.pw_name, "HOME": "/root", "CDB_CACHE_DIR": str(work / "cache"),
           "FAKE_MODE": "ok"}
    proc = subprocess.Popen([str(python), "-c", start, str(matrix), "--out", str(work / "out"),
                             "--env", f"diffusers={worker}"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = _watch(proc)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err

    def root(entry: dict) -> bool:
        return any(0 in uids for uids in entry["uids"])

    top = seen.pop(proc.pid)
    assert top["uids"][-1] == (user.pw_uid,) * 3  # the orchestrator dropped for good (real, effective, saved)
    # the broker is the orchestrator's fork that stays root; a child caught before it exec'd a
    # worker shows the same command line but the user's uids, and is checked with the others
    brokers = [pid for pid, e in seen.items() if e["ppid"] == proc.pid and e["cmds"] == top["cmds"] and root(e)]
    assert len(brokers) == 1 and seen[brokers[0]]["uids"] == [(0, 0, 0)]
    meters = {pid for pid, e in seen.items() if e["ppid"] == brokers[0]}
    assert meters and all(any(str(meter) in c or "powermetrics_replay" in c for c in seen[p]["cmds"]) for p in meters)
    others = {pid: e for pid, e in seen.items() if pid not in meters and pid != brokers[0]}
    assert others and not [e for e in others.values() if root(e)], others  # workers and all else: the user
    assert all(e["uids"] == [(user.pw_uid,) * 3] for e in others.values()), others
    assert set(ids.read_text().split("\n")) - {""} == {"0 0 0"}  # powermetrics itself ran as root, via the broker
    owners = {p: p.lstat().st_uid for p in work.rglob("*")}
    assert owners and set(owners.values()) == {user.pw_uid}, [str(p) for p, uid in owners.items() if uid != user.pw_uid]
    d = only_session(work / "out")
    runs = [json.loads(ln) for ln in (d / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2 and all(r["status"] == "ok" and r["worker_uid"] == user.pw_uid for r in runs)
    assert all(r["energy_per_step_j"] is not None and r["meter_exit"] == "stopped" for r in runs), runs
    session = json.loads((d / "session.json").read_text())
    assert "root meter broker" in session["power"]["meter_reason"]
    assert not psutil.pid_exists(brokers[0]) or psutil.Process(brokers[0]).status() == psutil.STATUS_ZOMBIE
