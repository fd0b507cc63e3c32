"""MLX: the harness's own SD1.5-family UNet (`workers.unet.mlx_unet`); devices cpu and gpu
(Metal on macOS, CUDA where an mlx CUDA build is installed); fp32, fp16, bf16."""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

import numpy as np

from workers.backends.base import LoadedModel, LoadSpec, Unsupported
from workers.contract.hostinfo import cpu_name

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# The wheels that carry mlx's compute backends; which one is installed says where it can run.
BACKEND_DISTRIBUTIONS = ("mlx-metal", "mlx-cpu", "mlx-cuda")


def versions() -> dict[str, str]:
    import mlx.core as mx

    out = {"mlx": mx.__version__, "numpy": np.__version__}
    for dist in BACKEND_DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _gpu_backend(mx) -> str | None:
    if mx.metal.is_available():
        return "metal"
    if mx.cuda.is_available():
        return "cuda"
    return None


def _device(name: str):
    import mlx.core as mx

    if name == "cpu":
        return mx.cpu
    if name == "gpu":
        if _gpu_backend(mx) is None:
            raise Unsupported("this mlx build has no GPU backend (mlx[cpu] on Linux runs on the CPU only; "
                              "the GPU needs Metal on macOS or an mlx CUDA build)")
        return mx.gpu
    raise Unsupported(f"device {name!r} is not an mlx device (cpu, gpu)")


class MlxUNet(LoadedModel):
    def __init__(self, spec: LoadSpec):
        import mlx.core as mx

        from workers.unet.mlx_unet import load_unet

        cell = spec.cell
        self._mx = mx
        device = _device(cell["device"])
        mx.set_default_device(device)  # one run per process: the whole worker computes there
        dtype = getattr(mx, DTYPES[cell["precision"]])
        self._model = load_unet(spec.arch, spec.model_path, dtype)
        inp = spec.inputs
        self._latent = mx.array(inp.latent).astype(dtype)
        self._text = mx.array(inp.text_embedding).astype(dtype)
        self._timestep = mx.array(inp.timestep, dtype=mx.float32)
        mx.eval(self._latent, self._text, self._timestep)
        self._out = None
        self._forward = self._model
        compile_s = None
        if cell.get("compile"):
            # Traced and compiled here, in load, never inside the timed window: the first call
            # of the compiled function does it.
            self._forward = mx.compile(self._model)
            t0 = time.perf_counter()
            self.step()
            compile_s = time.perf_counter() - t0
        self.realized: dict[str, Any] = {
            "device": cell["device"],
            "device_name": cpu_name() if device == mx.cpu else mx.device_info(device).get("device_name", ""),
            "gpu_backend": _gpu_backend(mx) if cell["device"] == "gpu" else None,
            "dtype": DTYPES[cell["precision"]],
            "layout": "NHWC inside, NCHW at the boundary",
            "attention": "sdpa",
            "compile": bool(cell.get("compile")),
            "compile_s": compile_s,
            "compile_cache": "none",  # MLX keeps no compile cache the harness can place (docs/backends.md)
        }

    def step(self) -> None:
        self._out = self._forward(self._latent, self._timestep, self._text)
        self._mx.eval(self._out)  # MLX is lazy: the step's work happens here

    def output(self) -> np.ndarray:
        if self._out is None:
            raise RuntimeError("output() before step()")
        return np.array(self._out.astype(self._mx.float32))


def probe() -> dict[str, Any]:
    """Which devices this env's mlx can use here (for `orchestrate doctor`)."""
    import mlx.core as mx

    gpu = _gpu_backend(mx)
    return {"cpu": cpu_name(),
            "gpu": f"{mx.device_info(mx.gpu).get('device_name', '')} ({gpu})" if gpu else False}


def load(spec: LoadSpec) -> LoadedModel:
    return MlxUNet(spec)
