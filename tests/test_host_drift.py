"""`benchmarks/host_drift.py` killed mid-command (a device call's time limit, a user's kill -9)
leaves no probe spinning on a CPU: the probe stops once its parent is gone. It used to run until
the stop file that its dead parent would never write, a full CPU busy beside whatever ran next."""

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
# starts the script and its probe, a few seconds on the 2-core box: kept out of the unit tier
pytestmark = pytest.mark.slow


def test_a_killed_command_leaves_no_probe_spinning(tmp_path):
    command = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "host_drift.py"), "--matrix", str(REPO / "examples" / "quick.toml"),
         "--cells", "diffusers-cpu-fp32", "--env", f"diffusers={sys.executable}", "--phase-s", "120",
         "--out", str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (probes := psutil.Process(command.pid).children()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert probes, "the probe never started"
        (probe,) = probes
        time.sleep(1)  # the probe is timing its slices
        assert probe.is_running()
    finally:
        command.kill()
        command.wait()
    try:
        probe.wait(timeout=10)
    except psutil.TimeoutExpired:
        probe.kill()
        pytest.fail("the probe kept spinning after its command was killed")
