"""The harness's UNet as a diffusers `UNet2DConditionModel` on the CPU in fp32, built from its
shipped config and its own LDM-to-diffusers mapping (nothing fetched). Shared by the diffusers
backend and the Core ML converters, so both start from the very same module and weights."""

from __future__ import annotations

from pathlib import Path

from workers.contract.checkpoint import read_unet
from workers.contract.layout import ldm_to_diffusers
from workers.contract.presets import UNetArch, diffusers_config


def build_unet(arch: UNetArch, model_path: str | Path):
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        model = UNet2DConditionModel(**diffusers_config(arch))
    state = {k: torch.from_numpy(v) for k, v in ldm_to_diffusers(arch, read_unet(model_path)).items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
