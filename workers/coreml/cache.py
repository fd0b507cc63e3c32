"""The conversion cache: one folder per artifact under `<cache_dir>/coreml/<key>/`, keyed by
everything that changes the converted program, filled under an exclusive file lock so two
sessions never convert the same artifact at once, and published by a rename so a crash never
leaves a half package that a later session would trust. Pure Python (no toolchain)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PACKAGE = "unet.mlpackage"
COMPILED = "unet.mlmodelc"
FACTS = "conversion.json"


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


class ConversionCache:
    def __init__(self, root: str | Path):
        self.root = Path(root) / "coreml"

    def entry(self, key: str) -> Path:
        return self.root / key

    def facts(self, key: str) -> dict[str, Any] | None:
        """The recorded facts of a finished entry, or None when there is none or they cannot be
        read (a damaged entry is converted again, never trusted)."""
        try:
            facts = json.loads((self.entry(key) / FACTS).read_text())
        except (OSError, ValueError):
            return None
        return facts if isinstance(facts, dict) else None

    @contextmanager
    def lock(self, key: str) -> Iterator[float]:
        """Hold `key`'s lock; yields the seconds spent waiting for another holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.root / f"{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield time.perf_counter() - t0
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextmanager
    def staging(self, key: str) -> Iterator[Path]:
        """A scratch folder that becomes the entry when the block finishes without error.
        Call with the lock held."""
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            shutil.rmtree(self.entry(key), ignore_errors=True)  # an entry without facts is unfinished
            os.replace(tmp, self.entry(key))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
