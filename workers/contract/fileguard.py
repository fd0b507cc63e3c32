"""A file's identity as it was when its digest was verified: the orchestrator hashes the weights
once per session and sends this guard; each worker compares it with `os.stat` instead of reading
gigabytes again. Replacing, rewriting or touching the file changes at least one of these fields,
so a changed file is still caught and never benchmarked."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workers.contract.typed import field


@dataclass(frozen=True)
class FileGuard:
    size: int = field(unit="bytes", doc="the file's size")
    mtime_ns: int = field(unit="ns", doc="its modification time")
    ctime_ns: int = field(unit="ns", doc="its status change time (a restored mtime still moves it)")
    inode: int = field(doc="its inode: a file replaced by rename has another")
    device: int = field(doc="the device holding it")

    @classmethod
    def of(cls, path: str | Path) -> FileGuard:
        st = os.stat(path)
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, inode=st.st_ino,
                   device=st.st_dev)

    def changes(self, path: str | Path) -> list[str]:
        """What differs now from the guarded file, as `name was -> is`; empty when nothing does."""
        now = FileGuard.of(path)
        return [f"{name} {getattr(self, name)} -> {getattr(now, name)}"
                for name in ("size", "mtime_ns", "ctime_ns", "inode", "device")
                if getattr(self, name) != getattr(now, name)]
