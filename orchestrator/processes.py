"""Ending a child process the one way the orchestrator does it everywhere (worker fork servers,
powermetrics, its guard and broker): TERM, a grace period, then KILL, and always reaped, so a
child that ignores TERM still ends and none is left a zombie."""

from __future__ import annotations

import subprocess


def end_process(proc: subprocess.Popen, grace_s: float) -> int | None:
    """Stop `proc` if it still runs; its exit status (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
