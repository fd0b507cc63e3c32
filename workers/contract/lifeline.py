"""Processes the orchestrator starts must end when it does, even when it is SIGKILLed and can
clean nothing up: they notice that their parent changed (they were re-parented) and leave.

Where the OS gives a process a file descriptor for another (Linux's pidfd), the watching thread
sleeps on one for its parent and wakes only when the parent exits, so a worker's timed loop shares
its process with no harness thread that wakes during it, as a user's own loop has none
(docs/methodology.md, "Harness overhead"). Elsewhere (macOS) it polls getppid() every 0.2 s."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable

PERIOD_S = 0.2


def parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def _wait_for_parent_exit(parent: int, period_s: float = PERIOD_S) -> None:
    """Return once `parent` is no longer this process's parent: asleep on a pidfd of it where
    there is one, else polling every `period_s`."""
    try:
        fd = os.pidfd_open(parent)
    except (AttributeError, OSError):  # no pidfd here (macOS, Linux before 5.3), or the parent is gone
        fd = -1
    if fd >= 0:
        # Kept open for the life of this process. A child forked from it (a fork server's worker)
        # closes its copy, once: the child's own children must not close whatever reuses the number.
        inherited = [fd]

        def close_inherited() -> None:
            while inherited:
                os.close(inherited.pop())

        os.register_at_fork(after_in_child=close_inherited)
        # Still our parent after the open: the fd is that process's, and its exit wakes it.
        if not parent_gone(parent):
            waiter = select.poll()  # not select(), which takes no fd past 1023
            waiter.register(fd, select.POLLIN)
            with contextlib.suppress(OSError):  # then the polling below watches instead
                waiter.poll()
    while not parent_gone(parent):
        time.sleep(period_s)


def exit_with_parent(period_s: float = PERIOD_S, on_gone: Callable[[], None] = lambda: os._exit(3)) -> None:
    """A daemon thread that calls `on_gone` once this process's parent has died."""
    parent = os.getppid()

    def watch() -> None:
        _wait_for_parent_exit(parent, period_s)
        on_gone()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
