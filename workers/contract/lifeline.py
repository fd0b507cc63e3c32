"""Processes the orchestrator starts must end when it does, even when it is SIGKILLed and can
clean nothing up.

On Linux the kernel does the watching: the process asks for a signal at its parent's death
(`PR_SET_PDEATHSIG`), so the harness adds no thread to a worker. A user's own loop has none, and a
process that never started a thread keeps glibc's `__libc_single_threaded` at 1, a state that a
single-threaded, dispatch-heavy CPU step runs measurably faster in; a child forked from a process
that had a thread never regains it (docs/methodology.md, "Harness overhead"). Elsewhere (macOS) a
daemon thread polls getppid() every 0.2 s."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

PERIOD_S = 0.2
ORPHAN_EXIT = 3  # the exit code of a process whose lifeline ended it, where it could choose one
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def ask_kernel(signum: int) -> bool:
    """Whether the kernel will send `signum` to this process when the thread that forked it ends:
    the parent's main thread, where the orchestrator and the fork server fork (a rule their code
    follows; nothing here checks it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def exit_with_parent(on_gone: Callable[[], None] | None = None, parent: int | None = None) -> None:
    """End this process once its parent has died: at once (SIGKILL from the kernel, nothing to run
    in a process that may be stuck in a device call), or, where `on_gone` is given, by calling it
    in the main thread, which must therefore wait in calls that signals interrupt (a fork server's
    select loop). `on_gone` must exit; it also runs on SIGTERM, which the process's children must
    block until they reset it (workers/forkserver.py). `parent` is the pid the parent had before
    this process began, where the caller knows it; else this process's parent now, so a parent
    that died before this call is missed (a spawned worker then ends at its first read of the
    closed stdin, a fork server at its first write)."""
    leave = on_gone or (lambda: os._exit(ORPHAN_EXIT))
    parent = os.getppid() if parent is None else parent
    if on_gone is not None:
        signal.signal(signal.SIGTERM, lambda *_: on_gone())
    if ask_kernel(signal.SIGTERM if on_gone is not None else signal.SIGKILL):
        if parent_gone(parent):  # it died before the request: no signal will come
            leave()
        return

    def watch() -> None:
        while not parent_gone(parent):
            time.sleep(PERIOD_S)
        leave()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
