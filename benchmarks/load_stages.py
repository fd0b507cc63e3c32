"""Where a diffusers worker's load time goes: run in the env's interpreter, it times each stage
of `workers.backends.diffusers_backend`'s load separately.

    PYTHON benchmarks/load_stages.py CHECKPOINT PRESET DEVICE PRECISION

Stages: importing torch and diffusers, device initialisation, checking the checkpoint's guard
(what the worker does before loading; the orchestrator hashed it once for the session), reading it, building the model, moving it, casting it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(path: str, preset_name: str, device: str, precision: str) -> None:
    t = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        print(f"{name:24s} {now - t:8.3f} s", flush=True)
        t = now

    import torch

    stage("import torch")
    from diffusers import UNet2DConditionModel

    stage("import diffusers")
    dev = torch.device(device)
    torch.empty(1, device=dev)
    stage(f"init {device}")
    from workers.backends.diffusers_backend import DTYPES
    from workers.contract.checkpoint import read_unet
    from workers.contract.fileguard import FileGuard
    from workers.contract.layout import ldm_to_diffusers
    from workers.contract.presets import diffusers_config, preset

    FileGuard.of(path).changes(path)
    stage("guard of checkpoint")
    arch = preset(preset_name)
    tensors = ldm_to_diffusers(arch, read_unet(path))
    stage("read + map keys")
    with torch.device("meta"):
        model = UNet2DConditionModel(**diffusers_config(arch))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True, assign=True)
    stage("build on meta + assign")
    model = model.to(device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    stage(f"move to {device}")
    model = model.to(dtype=getattr(torch, DTYPES[precision]))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    stage(f"cast to {precision}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
