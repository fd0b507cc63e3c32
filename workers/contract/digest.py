"""SHA-256 digests of files and arrays: how weights and inputs are pinned."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

_CHUNK = 8 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_array(a: np.ndarray) -> str:
    """Digest of the array's bytes in C order (dtype and shape are pinned beside it)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
