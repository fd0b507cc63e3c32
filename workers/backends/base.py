"""What a backend module provides to the worker.

A backend module exposes `versions() -> dict[str, str]` (its toolchain, for provenance) and
`load(spec: LoadSpec) -> LoadedModel`; `load` raises `Unsupported` when the cell's device or
precision cannot run on this host, which records the cell as `unsupported` instead of failed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.contract.inputs import PinnedInputs
from workers.contract.presets import UNetArch


class Unsupported(Exception):
    """This host cannot run the cell (no such device, backend not usable here). `facts` is what
    the backend established before it found out (a verified conversion, say), for the record."""

    def __init__(self, reason: str, facts: dict[str, Any] | None = None):
        super().__init__(reason)
        self.facts = facts or {}


@dataclass(frozen=True)
class LoadSpec:
    cell: dict[str, Any]
    arch: UNetArch
    model_path: str
    inputs: PinnedInputs
    model_sha256: str = ""
    cache_dir: str | None = None  # the session's cache, for backends that convert the model first


class LoadedModel(ABC):
    """A UNet resident on its device with the pinned input already there."""

    realized: dict[str, Any]  # what actually runs: device, dtype, attention, threads, ...

    @abstractmethod
    def step(self) -> None:
        """One UNet forward on the pinned input, returning only once the device has finished
        (the backend's own synchronisation), so wall time around it is the step's time."""

    @abstractmethod
    def output(self) -> np.ndarray:
        """The last step's output as float32 NCHW [batch, 4, H/8, W/8]."""
