"""Single-file LDM checkpoints: writing synthetic ones, reading the UNet out of any.

Synthetic weights are drawn from PCG64's raw 64-bit output and turned into float32 with exact
arithmetic, and the safetensors file is written here rather than by the safetensors library,
whose header layout may change between versions: together that makes the file bit-identical on
every machine and numpy version, so its digest can be pinned in a matrix.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from workers.contract.layout import LDM_PREFIX, TensorSpec, tensor_specs
from workers.contract.presets import UNetArch

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


def is_whole(path: str | Path) -> bool:
    """Whether a safetensors file is complete: its header parses and the file is exactly as long
    as the header says. A file cut short (a disk that filled, a copy stopped) is not, and is
    written again instead of being trusted. Reads the header only."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return False
            header = json.loads(f.read(n))
            size = os.fstat(f.fileno()).st_size
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False
    return size == 8 + n + end


# safetensors dtype names the reader maps straight onto numpy; bf16 has no numpy dtype.
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}


def read_unet(path: str | Path) -> dict[str, np.ndarray]:
    """The UNet tensors (LDM keys without prefix) of a single-file checkpoint, as numpy arrays.
    VAE and text-encoder tensors of a full checkpoint are not read.

    The arrays are views of a copy-on-write memory map of the file, not copies: the safetensors
    library's numpy reader copies every tensor, which on SD1.5's 3.4 GB was most of a worker's
    load time, and a backend copies the weights once anyway when it moves or casts them."""
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        (n,) = struct.unpack("<Q", f.read(8)) if size >= 8 else (size,)
        if size < 8 or 8 + n > size:
            raise ValueError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        header = json.loads(f.read(n))
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out: dict[str, np.ndarray] = {}
    for key, t in header.items():
        if not key.startswith(LDM_PREFIX):
            continue
        if t["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {key} is {t['dtype']}; readable dtypes are {', '.join(_DTYPES)}")
        start, end = t["data_offsets"]
        dtype = np.dtype(_DTYPES[t["dtype"]])
        count = math.prod(t["shape"])
        if end - start != count * dtype.itemsize or 8 + n + end > size:
            raise ValueError(f"{path}: tensor {key} has offsets {start}..{end} for shape {t['shape']} {t['dtype']}")
        out[key.removeprefix(LDM_PREFIX)] = np.frombuffer(data, dtype, count, 8 + n + start).reshape(t["shape"])
    if not out:
        raise ValueError(f"{path}: no '{LDM_PREFIX}*' tensors; not an LDM single-file checkpoint")
    return out
