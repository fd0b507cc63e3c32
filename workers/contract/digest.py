"""SHA-256 digests of files and arrays: how weights and inputs are pinned."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

# One reused buffer below glibc's default mmap threshold (128 KiB). The worker digests the model
# right before it loads and measures it: a larger transient buffer (it was 8 MiB) is mmapped and,
# once freed, raises glibc's dynamic mmap and trim thresholds for the rest of the process, which
# changes how often each step's tensors fault fresh pages in. A digest must leave the measured
# process as a user's own loop would find it (docs/methodology.md, "Harness overhead").
_CHUNK = 64 << 10


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def sha256_array(a: np.ndarray) -> str:
    """Digest of the array's bytes in C order (dtype and shape are pinned beside it)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
