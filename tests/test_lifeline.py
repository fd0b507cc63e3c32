"""A lifeline (workers/contract/lifeline.py) ends its process when the parent dies, SIGKILL
included, at once or through the process's own way out. On Linux the kernel signals it and the
process keeps a single thread, and glibc's single-threaded state with it, as a user's own loop
does; without the kernel's help a thread polls."""

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

# each case starts two Python processes and waits on a death: kept out of the unit tier
pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; the kernel's way is Linux's")]

# argv: the lifeline process's script, then its arguments; exits when that process does
PARENT = "import subprocess, sys\nsys.exit(subprocess.call([sys.executable, '-c', *sys.argv[1:]]))"

# argv: "kernel", or "poll" to do without the kernel's signal; then a file for the way out to
# write to, or "" for none. Prints its pid, then its thread count and glibc's single-threaded flag.
LIFELINE = """
import ctypes, os, sys, time
from workers.contract import lifeline
if sys.argv[1] == "poll":
    lifeline.ask_kernel = lambda signum: False
def way_out():
    with open(sys.argv[2], "w") as f:
        f.write("left")
    os._exit(lifeline.ORPHAN_EXIT)
lifeline.exit_with_parent(way_out if sys.argv[2] else None)
print(os.getpid(), flush=True)
flag = ctypes.c_char.in_dll(ctypes.CDLL(None), "__libc_single_threaded").value[0]
print(len(os.listdir("/proc/self/task")), flag, flush=True)
time.sleep(600)
"""


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


def _glibc_flag() -> bool:
    try:
        ctypes.c_char.in_dll(ctypes.CDLL(None), "__libc_single_threaded")
        return True
    except ValueError:
        return False


@pytest.mark.skipif(not _glibc_flag(), reason="glibc before 2.32 has no __libc_single_threaded")
@pytest.mark.parametrize("way_out", [False, True], ids=["at-once", "way-out"])
@pytest.mark.parametrize("mechanism", ["kernel", "poll"])
def test_the_lifeline_ends_its_process_when_the_parent_is_killed_without_a_thread_where_the_kernel_helps(
        mechanism, way_out, tmp_path: Path):
    marker = tmp_path / "left" if way_out else ""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, LIFELINE, mechanism, str(marker)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    pid = None
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        threads, single_threaded = map(int, parent.stdout.readline().split())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    try:
        if mechanism == "kernel":
            assert (threads, single_threaded) == (1, 1)
        else:
            assert (threads, single_threaded) == (2, 0)  # the polling thread
        deadline = time.monotonic() + 30  # a hang detector; it leaves within a few ms (kernel) or 0.2 s (poll)
        while not _exited(pid):
            assert time.monotonic() < deadline, f"the lifeline process {pid} outlived its killed parent"
            time.sleep(0.05)
        if way_out:
            assert isinstance(marker, Path) and marker.read_text() == "left", "it left without its way out"
    finally:
        if pid is not None and not _exited(pid):
            os.kill(pid, signal.SIGKILL)


# argv: a file descriptor for the worker's stdin. Spawns `python -m workers --serve` as the
# orchestrator does, waits for the first byte of its hello (sent after its lifeline is set),
# prints its pid, and waits on it.
ORCHESTRATOR = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-m", "workers", "--serve"], stdin=int(sys.argv[1]), stdout=subprocess.PIPE)
worker.stdout.read(1)
print(worker.pid, flush=True)
worker.wait()
"""


def test_a_spawned_worker_ends_with_its_killed_orchestrator_though_its_stdin_stays_open(tmp_path: Path):
    """The worker's own command sets its lifeline: here only the lifeline can end it, since the test
    holds the write end of its stdin, so it never reads an end of file."""
    r, w = os.pipe()
    parent = subprocess.Popen([sys.executable, "-c", ORCHESTRATOR, str(r)], pass_fds=(r,), stdout=subprocess.PIPE,
                              text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(r)
    pid = None
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert not _exited(pid), "the worker ended with its orchestrator still alive"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30  # a hang detector; it leaves within a few ms
        while not _exited(pid):
            assert time.monotonic() < deadline, f"the worker {pid} outlived its killed orchestrator"
            time.sleep(0.05)
    finally:
        os.close(w)
        parent.kill()
        parent.wait()
        if pid is not None and not _exited(pid):
            os.kill(pid, signal.SIGKILL)
