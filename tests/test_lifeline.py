"""A worker's lifeline (workers/contract/lifeline.py) ends it when its parent dies, SIGKILL
included; on Linux its thread sleeps on a pidfd and never wakes while the parent lives, so a timed
loop shares the worker with no thread that wakes; where there is no pidfd it polls instead."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; pidfd is Linux's")

# argv: the lifeline process's script, then its argument
PARENT = ("import subprocess, sys, time\n"
          "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]])\n"
          "time.sleep(600)")

# argv: "pidfd", or "poll" to take the pidfd away. Prints its pid, then how often the lifeline
# thread woke in one second (its voluntary context switches).
LIFELINE = """
import os, sys, threading, time
if sys.argv[1] == "poll":
    del os.pidfd_open
from workers.contract.lifeline import exit_with_parent
exit_with_parent()
print(os.getpid(), flush=True)
time.sleep(0.3)
tid = next(t.native_id for t in threading.enumerate() if t.name == "lifeline")
def switches():
    with open(f"/proc/self/task/{tid}/status") as f:
        return int(next(line for line in f if line.startswith("voluntary_ctxt_switches")).split()[1])
before = switches()
time.sleep(1.0)
print(switches() - before, flush=True)
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
    try:
        assert parent.stdout is not None
        pid, wakes = int(parent.stdout.readline()), int(parent.stdout.readline())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    if mechanism == "pidfd":
        assert wakes == 0
    else:
        assert wakes >= 2  # every 0.2 s: about 5 in the second
    deadline = time.monotonic() + 30  # a hang detector; it leaves within a few ms (pidfd) or 0.2 s (poll)
    while not _exited(pid):
        assert time.monotonic() < deadline, f"the lifeline process {pid} outlived its killed parent"
        time.sleep(0.05)
