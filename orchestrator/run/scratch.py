"""Scratch folders in the temp dir (a fork server's socket, a fleet node's session, a debug
worker's log). Each is removed by the process that made it, except when that process is
SIGKILLed, as a lost fleet node is: so each folder's name carries its host and its maker's pid,
and making one first removes the folders of its kind that dead makers on this host left."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil


def _prefix(kind: str) -> str:
    """`cdb-KIND-HOST-`: HOST is a short digest of the hostname, so a temp dir that several
    hosts share never has one host judge another's pids."""
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    return f"cdb-{kind}-{host}-"


def sweep(kind: str) -> list[Path]:
    """Remove this host's folders of `kind` whose maker is no longer running; the removed ones."""
    prefix, removed = _prefix(kind), []
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            pid = entry.name.removeprefix(prefix).split("-", 1)[0]
            if (entry.name.startswith(prefix) and pid.isdigit() and not psutil.pid_exists(int(pid))
                    and entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


def folder(kind: str) -> Path:
    """A new folder of `kind` for this process, after a sweep of those dead makers left."""
    sweep(kind)
    return Path(tempfile.mkdtemp(prefix=f"{_prefix(kind)}{os.getpid()}-"))


@contextlib.contextmanager
def temporary(kind: str) -> Iterator[Path]:
    """`folder(kind)`, removed when the block ends."""
    path = folder(kind)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
