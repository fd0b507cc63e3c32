"""`python -m orchestrator.energy.meters.guard -- CMD...`: runs CMD and ends it when the process that
started the guard dies, however it dies (SIGKILL included), on Linux and macOS alike. A meter
such as powermetrics runs as root and must never outlive the orchestrator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from orchestrator.processes import end_process
from workers.contract.lifeline import PERIOD_S, parent_gone


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python -m orchestrator.energy.meters.guard -- CMD [ARGS...]", file=sys.stderr)
        return 2
    cmd = argv[argv.index("--") + 1:]
    parent = os.getppid()
    child = subprocess.Popen(cmd)

    def end(signum=None, frame=None) -> None:
        end_process(child, grace_s=2)
        sys.exit(0)

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, end)
    while child.poll() is None:
        if parent_gone(parent):
            end()
        time.sleep(PERIOD_S)
    return child.returncode if child.returncode >= 0 else 128 - child.returncode  # killed by signal N: 128+N


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
