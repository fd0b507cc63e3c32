"""Processes the orchestrator starts must end when it does, even when it is SIGKILLed and can
clean nothing up: they notice that their parent changed (they were re-parented) and leave.
Polling getppid() works the same on Linux and macOS."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

PERIOD_S = 0.2


def parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def exit_with_parent(period_s: float = PERIOD_S, on_gone: Callable[[], None] = lambda: os._exit(3)) -> None:
    """A daemon thread that calls `on_gone` once this process's parent has died."""
    parent = os.getppid()

    def watch() -> None:
        while not parent_gone(parent):
            time.sleep(period_s)
        on_gone()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
