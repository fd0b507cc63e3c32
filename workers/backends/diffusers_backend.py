"""diffusers `UNet2DConditionModel` on PyTorch: devices cpu, cuda[:N], mps; fp32, fp16, bf16."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from workers.backends.base import LoadedModel, LoadSpec, Unsupported
from workers.contract.hostinfo import cpu_name
from workers.unet.torch_unet import build_unet

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def versions() -> dict[str, str]:
    import diffusers
    import torch

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": np.__version__}


def _device(name: str):
    import torch

    kind = name.split(":")[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise Unsupported("CUDA is not available (no NVIDIA GPU, or this torch build has no CUDA)")
        dev = torch.device(name)
        if (dev.index or 0) >= torch.cuda.device_count():
            raise Unsupported(f"{name} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise Unsupported("MPS is not available (needs macOS on Apple Silicon)")
        return torch.device("mps")
    raise Unsupported(f"device {name!r} is not a diffusers device (cpu, cuda[:N], mps)")


class DiffusersUNet(LoadedModel):
    def __init__(self, spec: LoadSpec):
        import torch

        cell = spec.cell
        self._torch = torch
        self._device = _device(cell["device"])
        dtype = getattr(torch, DTYPES[cell["precision"]])
        # Moved first, cast second: the cast then runs on the device, not on one CPU thread.
        self._model = build_unet(spec.arch, spec.model_path).to(device=self._device).to(dtype=dtype)
        inp = spec.inputs
        # copy=True: the inputs live in torch's own (aligned) allocation whichever way the numpy
        # arrays arrived, so input placement is not a hidden difference between runs.
        self._latent = torch.from_numpy(inp.latent).to(self._device, dtype, copy=True)
        self._text = torch.from_numpy(inp.text_embedding).to(self._device, dtype, copy=True)
        self._timestep = torch.tensor(inp.timestep, device=self._device)
        self._out = None
        self._forward = self._model
        compile_s = None
        compile_cache = "none"
        if mode := cell.get("compile"):
            compile_cache = _compile_cache(spec, {
                "torch": torch.__version__, "device": _device_name(torch, self._device), "dtype": str(dtype),
                "mode": mode, "arch": spec.arch.as_dict(), "latent": list(inp.latent.shape),
                "text_embedding": list(inp.text_embedding.shape)})
            # Compiling happens here, in load, never inside the timed window: the first call
            # traces and compiles; "reduce-overhead" also records its CUDA graphs then.
            self._forward = torch.compile(self._model, mode=mode)
            t0 = time.perf_counter()
            self.step()
            compile_s = time.perf_counter() - t0
        processors = {type(p).__name__ for p in self._model.attn_processors.values()}
        self.realized: dict[str, Any] = {
            "device": str(self._device),
            "device_name": _device_name(torch, self._device),
            "dtype": str(dtype).removeprefix("torch."),
            "attention": "sdpa",
            "attention_processors": sorted(processors),
            "torch_threads": torch.get_num_threads(),
            "compile": cell.get("compile"),
            "compile_s": compile_s,
            "compile_cache": compile_cache,
        }

    def _sync(self) -> None:
        if self._device.type == "cuda":
            self._torch.cuda.synchronize(self._device)
        elif self._device.type == "mps":
            self._torch.mps.synchronize()

    def step(self) -> None:
        with self._torch.inference_mode():
            self._out = self._forward(self._latent, self._timestep, encoder_hidden_states=self._text, return_dict=False)[0]
        self._sync()

    def output(self) -> np.ndarray:
        if self._out is None:
            raise RuntimeError("output() before step()")
        return self._out.detach().to("cpu", self._torch.float32).numpy()


def _compile_cache(spec: LoadSpec, what: dict[str, Any]) -> str:
    """Point inductor and Triton at a folder of the session's cache dir, one per compiled
    configuration (`what`), so that only a configuration's first run compiles cold: `cold` or
    `warm` by whether that folder held files before this compile; `none` without a cache dir.
    Both read their variable when they first compile, which is after this."""
    if spec.cache_dir is None:
        return "none"
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(spec.cache_dir) / "torch-compile" / key
    warm = root.is_dir() and any(p.is_file() for p in root.rglob("*"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
    return "warm" if warm else "cold"


def _device_name(torch, device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return cpu_name()


def probe() -> dict[str, Any]:
    """Which devices this env's torch can use here (for `orchestrate doctor`)."""
    import torch

    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": cpu_name(), "cuda": cuda, "mps": bool(torch.backends.mps.is_available())}


def load(spec: LoadSpec) -> LoadedModel:
    return DiffusersUNet(spec)
