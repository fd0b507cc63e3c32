"""The backends, one entry each: what a matrix cell may ask of a backend, which env runs it by
default, and which worker module implements it. Torch-free, so the orchestrator validates
matrices against it without importing a toolchain; a worker imports `module` (see
workers/backends/). A new backend is one module plus one entry in `BACKENDS`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("fp32", "fp16", "bf16")
CONVERTERS = ("harness", "coreml-diffusion", "apple")


@dataclass(frozen=True)
class Option:
    """A backend-specific cell key: its closed set of values (their type is the option's type)."""

    values: tuple[Any, ...]
    help: str


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # implements versions(), probe() and load(spec) (workers/backends/base.py)
    default_env: str  # envs/<name> a cell uses when it names none
    devices: str  # regex of the `device` values it accepts; "" when cells choose `compute_unit`
    attention: tuple[str, ...]  # the first is the default
    precisions: tuple[str, ...] = PRECISIONS
    compute_units: tuple[str, ...] = ()
    options: dict[str, Option] = field(default_factory=dict)
    preload: tuple[str, ...] = ()  # what a fork server imports once for all runs (workers/forkserver.py)

    def env_names(self, envs: set[str]) -> list[str]:
        """The envs that hold this backend's toolchain: `NAME` and `NAME-*` (coreml-ct8, ...)."""
        return sorted(n for n in envs if n == self.name or n.startswith(self.name + "-"))


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("diffusers", "workers.backends.diffusers_backend", "diffusers", r"cpu|mps|cuda(:\d+)?", ("sdpa",),
            options={"compile": Option(("default", "reduce-overhead", "max-autotune"), "torch.compile mode")},
            preload=("torch", "diffusers", "diffusers.models.unets.unet_2d_condition", "workers.backends.diffusers_backend",
                     "workers.unet.torch_unet")),
    Backend("mlx", "workers.backends.mlx_backend", "mlx", r"cpu|gpu", ("sdpa",),
            options={"compile": Option((True, False), "mx.compile the step")},
            preload=("mlx.core", "mlx.nn", "workers.backends.mlx_backend", "workers.unet.mlx_unet")),
    Backend("coreml", "workers.backends.coreml_backend", "coreml-ct9", "", ("split_einsum_v2", "split_einsum", "original"),
            compute_units=("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"),
            options={"converter": Option(CONVERTERS, "who converts the UNet (the first is the default)"),
                     "palettization": Option(("w8", "w6", "w4"), "k-means weight palettization"),
                     "deployment_target": Option(("macOS13", "macOS14", "macOS15"), "Core ML deployment target")},
            preload=("coremltools", "workers.backends.coreml_backend")),
)}
