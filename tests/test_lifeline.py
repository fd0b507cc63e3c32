"""A worker's lifeline (workers/contract/lifeline.py) ends it when its parent dies, SIGKILL
included. On Linux its thread holds a pidfd of the parent and never wakes while the parent lives,
so a timed loop shares the worker with no harness thread that wakes; a child forked from it (a fork
server's worker) does not inherit that pidfd, and that child's own children keep the descriptor
that took its number. Without a pidfd the thread polls."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

# each case sleeps a second to count wakes: kept out of the unit tier
pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; pidfd is Linux's")]

# argv: the lifeline process's script, then its argument; exits when that process does
PARENT = "import subprocess, sys\nsys.exit(subprocess.call([sys.executable, '-c', sys.argv[1], sys.argv[2]]))"

# argv: "pidfd", or "poll" to take the pidfd away. Prints its pid; then, once the lifeline thread
# has settled (asleep on its pidfd; for poll, past its first sleep), how many pidfds the process
# holds and how often the thread woke in the next second (at most 10 s go to settling: a thread
# that never sleeps through 0.2 s is then counted as it is); then the
# pidfds held by a child forked from it and by that child's child, and whether the descriptor the
# child opened after the fork (likely on the closed pidfd's number) is still open in its child.
LIFELINE = """
import os, sys, threading, time
if sys.argv[1] == "poll":
    del os.pidfd_open
from workers.contract.lifeline import exit_with_parent
def pidfds():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[pidfd]"
        except OSError:
            pass
    return n
exit_with_parent()
print(os.getpid(), flush=True)
tid = next(t.native_id for t in threading.enumerate() if t.name == "lifeline")
def switches():
    with open(f"/proc/self/task/{tid}/status") as f:
        return int(next(line for line in f if line.startswith("voluntary_ctxt_switches")).split()[1])
if sys.argv[1] == "pidfd":
    # settled once it holds the pidfd and stays asleep for 0.2 s (starting, it also waited for the GIL)
    for _ in range(50):
        before = switches()
        time.sleep(0.2)
        if pidfds() == 1 and switches() == before:
            break
else:
    while switches() == 0:
        time.sleep(0.01)
before = switches()
time.sleep(1.0)
print(pidfds(), switches() - before, flush=True)
r, w = os.pipe()
if os.fork() == 0:
    kept = os.open(os.devnull, os.O_RDONLY)
    if os.fork() == 0:
        try:
            os.fstat(kept)
            still_open = True
        except OSError:
            still_open = False
        os.write(w, f"{pidfds()} {still_open}".encode())
        os._exit(0)
    os.wait()
    os.write(w, f" {pidfds()}".encode())
    os._exit(0)
os.wait()
os.close(w)
print(os.read(r, 100).decode(), flush=True)
time.sleep(600)
"""


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("mechanism", ["pidfd", "poll"])
def test_the_lifeline_ends_its_process_when_the_parent_is_killed_and_only_polls_without_a_pidfd(mechanism):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, LIFELINE, mechanism], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    pid = None
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        held, wakes = map(int, parent.stdout.readline().split())
        forked = parent.stdout.readline().split()
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    try:
        if mechanism == "pidfd":
            assert (held, wakes) == (1, 0)
        else:
            assert held == 0 and wakes >= 1  # every 0.2 s: about 5 in the second
        assert forked == ["0", "True", "0"]  # grandchild's pidfds, its inherited descriptor open; child's pidfds
        deadline = time.monotonic() + 30  # a hang detector; it leaves within a few ms (pidfd) or 0.2 s (poll)
        while not _exited(pid):
            assert time.monotonic() < deadline, f"the lifeline process {pid} outlived its killed parent"
            time.sleep(0.05)
    finally:
        if pid is not None and not _exited(pid):
            os.kill(pid, signal.SIGKILL)
