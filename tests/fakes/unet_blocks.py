"""Run inside the diffusers env and inside the mlx env by the tests: each block type of the
`tiny` UNet on the same inputs, the outputs saved as .npz for the test to compare.

Each side builds the whole UNet from the same synthetic checkpoint and takes the block at the
same diffusers path, so both blocks hold the same weights without any being copied here, and
their constructor arguments (eps, heads, channels) come from each side's own model.

    python unet_blocks.py diffusers|mlx CHECKPOINT OUT.npz
"""

import sys

import numpy as np

from workers.contract.presets import preset

ARCH = preset("tiny")
TEMB = ARCH.time_embed_dim
TIMESTEPS = np.array([0, 1, 500, 999], np.int64)

# name -> (diffusers path of the block, input shapes in NCHW / tokens); inputs get drawn below
BLOCKS = {
    "resnet": ("down_blocks.0.resnets.0", {"x": (2, 32, 16, 16), "temb": (2, TEMB)}),
    "resnet_shortcut": ("up_blocks.1.resnets.0", {"x": (2, 96, 16, 16), "temb": (2, TEMB)}),
    "transformer_block": ("down_blocks.0.attentions.0.transformer_blocks.0", {"x": (2, 64, 32), "context": (2, 77, 768)}),
    "spatial_transformer": ("down_blocks.0.attentions.0", {"x": (2, 32, 8, 8), "context": (2, 77, 768)}),
    "downsample": ("down_blocks.0.downsamplers.0", {"x": (2, 32, 16, 16)}),
    "upsample": ("up_blocks.0.upsamplers.0", {"x": (2, 64, 8, 8)}),
}


def inputs() -> dict[str, dict[str, np.ndarray]]:
    """Standard normal, but hidden states `x` scaled by 0.01: their variance (1e-4) then sits
    near the norms' eps (1e-5, 1e-6), so a wrong eps changes the output measurably."""
    rng = np.random.default_rng(1)
    return {name: {k: rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01 if k == "x" else 1.0)
                   for k, shape in shapes.items()}
            for name, (_, shapes) in BLOCKS.items()}


def diffusers_side(path: str) -> dict[str, np.ndarray]:
    import torch
    from diffusers import UNet2DConditionModel

    from workers.contract.checkpoint import read_unet
    from workers.contract.layout import ldm_to_diffusers
    from workers.contract.presets import diffusers_config

    with torch.device("meta"):
        model = UNet2DConditionModel(**diffusers_config(ARCH))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in ldm_to_diffusers(ARCH, read_unet(path)).items()},
                          strict=True, assign=True)
    model.eval()
    t = {name: {k: torch.from_numpy(v) for k, v in d.items()} for name, d in inputs().items()}
    out = {}
    with torch.inference_mode():
        block = lambda name: model.get_submodule(BLOCKS[name][0])  # noqa: E731
        out["resnet"] = block("resnet")(t["resnet"]["x"], t["resnet"]["temb"])
        out["resnet_shortcut"] = block("resnet_shortcut")(t["resnet_shortcut"]["x"], t["resnet_shortcut"]["temb"])
        tb = t["transformer_block"]
        out["transformer_block"] = block("transformer_block")(tb["x"], encoder_hidden_states=tb["context"])
        st = t["spatial_transformer"]
        out["spatial_transformer"] = block("spatial_transformer")(st["x"], encoder_hidden_states=st["context"],
                                                                  return_dict=False)[0]
        out["downsample"] = block("downsample")(t["downsample"]["x"])
        out["upsample"] = block("upsample")(t["upsample"]["x"])
        out["time_embedding"] = model.time_embedding(model.time_proj(torch.from_numpy(TIMESTEPS)))
    return {k: v.float().numpy() for k, v in out.items()}


def mlx_side(path: str) -> dict[str, np.ndarray]:
    import mlx.core as mx

    from workers.unet.mlx_unet import load_unet, timestep_embedding

    model = load_unet(ARCH, path, mx.float32)

    def block(name: str):
        obj = model
        for part in BLOCKS[name][0].split("."):
            obj = obj[int(part)] if isinstance(obj, list) else getattr(obj, part)
        return obj

    nhwc = lambda a: mx.array(a).transpose(0, 2, 3, 1) if a.ndim == 4 else mx.array(a)  # noqa: E731
    nchw = lambda a: np.array(a.transpose(0, 3, 1, 2) if a.ndim == 4 else a)  # noqa: E731
    t = {name: {k: nhwc(v) for k, v in d.items()} for name, d in inputs().items()}
    out = {
        "resnet": block("resnet")(t["resnet"]["x"], t["resnet"]["temb"]),
        "resnet_shortcut": block("resnet_shortcut")(t["resnet_shortcut"]["x"], t["resnet_shortcut"]["temb"]),
        "transformer_block": block("transformer_block")(t["transformer_block"]["x"], t["transformer_block"]["context"]),
        "spatial_transformer": block("spatial_transformer")(t["spatial_transformer"]["x"],
                                                            t["spatial_transformer"]["context"]),
        "downsample": block("downsample")(t["downsample"]["x"]),
        "upsample": block("upsample")(t["upsample"]["x"]),
        "time_embedding": model.time_embedding(timestep_embedding(mx.array(TIMESTEPS), ARCH.block_out_channels[0])),
    }
    return {k: nchw(v) for k, v in out.items()}


if __name__ == "__main__":
    side, path, out_path = sys.argv[1:4]
    np.savez(out_path, **{"diffusers": diffusers_side, "mlx": mlx_side}[side](path))
