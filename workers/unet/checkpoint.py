"""Single-file LDM checkpoints: writing synthetic ones, reading the UNet out of any.

Synthetic weights are drawn from PCG64's raw 64-bit output and turned into float32 with exact
arithmetic, and the safetensors file is written here rather than by the safetensors library,
whose header layout may change between versions: together that makes the file bit-identical on
every machine and numpy version, so its digest can be pinned in a matrix.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from workers.unet.layout import LDM_PREFIX, TensorSpec, tensor_specs
from workers.unet.presets import UNetArch

SYNTHETIC_FORMAT = "coreml-diffusion-benchmarks synthetic v1"


def _uniform(bitgen: np.random.PCG64, n: int) -> np.ndarray:
    """n float32 values in [-1, 1): the top 24 bits of each raw draw, scaled exactly."""
    top = (bitgen.random_raw(n) >> np.uint64(40)).astype(np.float32)
    return top * np.float32(2.0**-23) - np.float32(1.0)


def _draw(spec: TensorSpec, bitgen: np.random.PCG64) -> np.ndarray:
    """Variance-preserving uniform init: activations stay O(1), so fp16 and bf16 stay finite.
    Norm scales sit near 1 and biases are small but non-zero, so a mis-mapped tensor changes
    the output instead of hiding behind a constant."""
    n = math.prod(spec.shape)
    u = _uniform(bitgen, n).reshape(spec.shape)
    if spec.kind == "weight":
        return u * np.float32(math.sqrt(3.0 / spec.fan_in))
    if spec.kind == "norm_weight":
        return np.float32(1.0) + np.float32(0.1) * u
    return u * np.float32(0.1)


def write_synthetic(arch: UNetArch, seed: int, path: str | Path) -> Path:
    """Write `arch` with weights drawn from `seed` as an LDM-layout safetensors file.

    Written to a temporary name and renamed, so a crash never leaves a half file that a later
    session would trust."""
    path = Path(path)
    specs = tensor_specs(arch)
    header: dict[str, object] = {
        "__metadata__": {"format": "pt", "generator": SYNTHETIC_FORMAT, "preset": arch.name, "seed": str(seed)}
    }
    offset = 0
    for s in specs:
        size = 4 * math.prod(s.shape)
        header[LDM_PREFIX + s.ldm_key] = {"dtype": "F32", "shape": list(s.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    bitgen = np.random.PCG64(seed)
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for s in specs:
            f.write(_draw(s, bitgen).astype("<f4", copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_unet(path: str | Path) -> dict[str, np.ndarray]:
    """The UNet tensors (LDM keys without prefix) of a single-file checkpoint, as numpy arrays.
    VAE and text-encoder tensors of a full checkpoint are not read."""
    from safetensors import safe_open

    out: dict[str, np.ndarray] = {}
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            if key.startswith(LDM_PREFIX):
                out[key.removeprefix(LDM_PREFIX)] = f.get_tensor(key)
    if not out:
        raise ValueError(f"{path}: no '{LDM_PREFIX}*' tensors; not an LDM single-file checkpoint")
    return out
