"""UNet architectures the harness ships, so nothing is fetched from a model hub at run time."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class UNetArch:
    """An SD1.5-family UNet (LDM `UNetModel` / diffusers `UNet2DConditionModel`).

    `attention` says, per resolution level, whether its blocks carry a cross-attention
    transformer; the up path mirrors the down path, and the middle block always has one.
    """

    name: str
    block_out_channels: tuple[int, ...]
    attention: tuple[bool, ...]
    layers_per_block: int
    num_heads: int
    cross_attention_dim: int = 768
    in_channels: int = 4
    out_channels: int = 4
    norm_num_groups: int = 32

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetArch:
        return cls(**{**d, "block_out_channels": tuple(d["block_out_channels"]), "attention": tuple(d["attention"])})


PRESETS: dict[str, UNetArch] = {
    # v1-inference.yaml of Stable Diffusion 1.x: model_channels 320, channel_mult [1,2,4,4],
    # attention at the first three levels, 2 res blocks, 8 heads, context 768.
    "sd15": UNetArch(
        name="sd15",
        block_out_channels=(320, 640, 1280, 1280),
        attention=(True, True, True, False),
        layers_per_block=2,
        num_heads=8,
    ),
    # The same block types at toy width: every code path of sd15, milliseconds per step on a CPU.
    "tiny": UNetArch(
        name="tiny",
        block_out_channels=(32, 64),
        attention=(True, False),
        layers_per_block=2,
        num_heads=2,
    ),
}


def preset(name: str) -> UNetArch:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown UNet preset {name!r} (known: {', '.join(sorted(PRESETS))})") from None


def diffusers_config(arch: UNetArch) -> dict:
    """Keyword arguments for `diffusers.UNet2DConditionModel` that build `arch`."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.attention))
    return {
        "in_channels": arch.in_channels,
        "out_channels": arch.out_channels,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": arch.block_out_channels,
        "layers_per_block": arch.layers_per_block,
        "cross_attention_dim": arch.cross_attention_dim,
        # diffusers' historical naming: for SD1.x `attention_head_dim` holds the head count.
        "attention_head_dim": arch.num_heads,
        "norm_num_groups": arch.norm_num_groups,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "use_linear_projection": False,
        "act_fn": "silu",
    }
