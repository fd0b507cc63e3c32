"""Backends by name. Importing this module imports no toolchain: the orchestrator reads the
names here, and only a worker imports a backend module."""

from __future__ import annotations

import importlib
from types import ModuleType

from workers.coreml.request import CONVERTERS

# name -> module implementing `versions()` and `load(spec)` (see workers.backends.base)
IMPLEMENTED: dict[str, str] = {
    "diffusers": "workers.backends.diffusers_backend",
    "mlx": "workers.backends.mlx_backend",
    "coreml": "workers.backends.coreml_backend",
}

# Cell keys each backend understands beyond the common ones.
EXTRA_CELL_KEYS: dict[str, frozenset[str]] = {
    "diffusers": frozenset({"compile"}),
    "mlx": frozenset({"compile"}),
    "coreml": frozenset({"converter", "palettization", "deployment_target"}),
}

# Allowed values of those keys, where they are a closed set.
OPTION_VALUES: dict[str, dict[str, tuple]] = {
    "diffusers": {"compile": ("default", "reduce-overhead", "max-autotune")},  # torch.compile modes
    "mlx": {"compile": (True, False)},
    "coreml": {
        "palettization": ("w8", "w6", "w4"),
        "converter": CONVERTERS,
        "deployment_target": ("macOS13", "macOS14", "macOS15"),
    },
}

ATTENTION: dict[str, frozenset[str]] = {
    "diffusers": frozenset({"sdpa"}),
    "mlx": frozenset({"sdpa"}),
    "coreml": frozenset({"original", "split_einsum", "split_einsum_v2"}),
}


def backend_module(name: str) -> ModuleType:
    if name not in IMPLEMENTED:
        raise KeyError(f"unknown backend {name!r}")
    return importlib.import_module(IMPLEMENTED[name])
