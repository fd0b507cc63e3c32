"""The worker side of the backend registry (workers/contract/backends.py): the module that
implements a backend, imported only in a worker, where its toolchain is."""

from __future__ import annotations

import importlib
from types import ModuleType

from workers.contract.backends import BACKENDS


def backend_module(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise KeyError(f"unknown backend {name!r}")
    return importlib.import_module(BACKENDS[name].module)
