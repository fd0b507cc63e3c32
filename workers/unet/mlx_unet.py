"""The SD1.5-family UNet in MLX, built from a `UNetArch`. Imported only by the MLX backend.

NHWC inside, as MLX's convolutions want; NCHW at `UNet.__call__`'s boundary, so its input and
output are the other backends'. Modules carry diffusers' parameter names, so the harness's one
LDM-to-diffusers table (`layout.ldm_to_diffusers`) names every weight: loading adds only the
conv layout change (OIHW -> OHWI), done once.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from workers.contract.checkpoint import read_unet
from workers.contract.layout import ldm_to_diffusers
from workers.contract.presets import UNetArch

RESNET_EPS = 1e-5  # diffusers' norm_eps for SD1.x
TRANSFORMER_NORM_EPS = 1e-6  # Transformer2DModel's GroupNorm
LAYER_NORM_EPS = 1e-5  # BasicTransformerBlock's LayerNorms


class GroupNorm(nn.GroupNorm):
    """torch's GroupNorm, computed in fp32 whatever the model's dtype: fp16 statistics over
    thousands of values lose the digits the equivalence check measures."""

    def __init__(self, groups: int, dims: int, eps: float):
        super().__init__(groups, dims, eps=eps, pytorch_compatible=True)

    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(x.astype(mx.float32)).astype(x.dtype)


def timestep_embedding(timesteps: mx.array, dim: int, max_period: float = 10000.0) -> mx.array:
    """diffusers' `get_timestep_embedding` as SD1.x configures it (flip_sin_to_cos=True,
    downscale_freq_shift=0), in fp32: [cos | sin] of t times geometric frequencies."""
    half = dim // 2
    freqs = mx.exp(-math.log(max_period) * mx.arange(half, dtype=mx.float32) / half)
    args = timesteps.astype(mx.float32)[:, None] * freqs[None, :]
    return mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, in_c: int, out_c: int, temb: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(groups, in_c, RESNET_EPS)
        self.conv1 = nn.Conv2d(in_c, out_c, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, out_c)
        self.norm2 = GroupNorm(groups, out_c, RESNET_EPS)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, padding=1)
        if in_c != out_c:
            self.conv_shortcut = nn.Conv2d(in_c, out_c, 1)

    def __call__(self, x: mx.array, temb: mx.array) -> mx.array:
        h = self.conv1(nn.silu(self.norm1(x)))
        h = h + self.time_emb_proj(nn.silu(temb))[:, None, None, :]
        h = self.conv2(nn.silu(self.norm2(h)))
        if "conv_shortcut" in self:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = [nn.Linear(dim, dim)]  # a list: diffusers' `to_out.0`

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        b, n, c = x.shape
        split = lambda t: t.reshape(b, t.shape[1], self.heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=(c // self.heads) ** -0.5)
        return self.to_out[0](o.transpose(0, 2, 1, 3).reshape(b, n, c))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def __call__(self, x: mx.array) -> mx.array:
        value, gate = mx.split(self.proj(x), 2, axis=-1)
        return value * nn.gelu(gate)  # exact (erf) GELU, as torch's default


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # diffusers' `net` is [GEGLU, Dropout, Linear]; the identity keeps `net.2`'s name.
        self.net = [GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn1 = Attention(dim, dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn2 = Attention(dim, context_dim, heads)
        self.norm3 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ff = FeedForward(dim)

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """SpatialTransformer with 1x1-conv projections (use_linear_projection=False, as SD1.x)."""

    def __init__(self, dim: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.norm = GroupNorm(groups, dim, TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = [BasicTransformerBlock(dim, context_dim, heads)]
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        b, h, w, c = x.shape
        y = self.proj_in(self.norm(x)).reshape(b, h * w, c)
        y = self.transformer_blocks[0](y, context)
        return x + self.proj_out(y.reshape(b, h, w, c))


class Downsample2D(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        x = mx.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)  # nearest
        return self.conv(x)


class UNetBlock(nn.Module):
    """A down or up block: resnets, each followed by a transformer where the level has
    attention, and an optional resampler. Up blocks concatenate a skip before each resnet."""

    def __init__(self, arch: UNetArch, in_channels: list[int], out_c: int, attention: bool,
                 resampler: type[Downsample2D] | type[Upsample2D] | None):
        super().__init__()
        groups, temb = arch.norm_num_groups, arch.time_embed_dim
        self.resnets = [ResnetBlock2D(c, out_c, temb, groups) for c in in_channels]
        if attention:
            self.attentions = [Transformer2DModel(out_c, arch.cross_attention_dim, arch.num_heads, groups)
                               for _ in in_channels]
        if resampler is Downsample2D:
            self.downsamplers = [Downsample2D(out_c)]
        elif resampler is Upsample2D:
            self.upsamplers = [Upsample2D(out_c)]

    def __call__(self, x: mx.array, temb: mx.array, context: mx.array,
                 skips: list[mx.array] | None = None) -> tuple[mx.array, list[mx.array]]:
        """Returns the output and the states a down block hands to the up path."""
        states = []
        for i, resnet in enumerate(self.resnets):
            if skips is not None:
                x = mx.concatenate([x, skips.pop()], axis=-1)
            x = resnet(x, temb)
            if "attentions" in self:
                x = self.attentions[i](x, context)
            states.append(x)
        if "downsamplers" in self:
            x = self.downsamplers[0](x)
            states.append(x)
        if "upsamplers" in self:
            x = self.upsamplers[0](x)
        return x, states


class MidBlock(nn.Module):
    def __init__(self, arch: UNetArch, c: int):
        super().__init__()
        groups, temb = arch.norm_num_groups, arch.time_embed_dim
        self.resnets = [ResnetBlock2D(c, c, temb, groups), ResnetBlock2D(c, c, temb, groups)]
        self.attentions = [Transformer2DModel(c, arch.cross_attention_dim, arch.num_heads, groups)]

    def __call__(self, x: mx.array, temb: mx.array, context: mx.array) -> mx.array:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


class UNet(nn.Module):
    """`UNet2DConditionModel` of `diffusers_config(arch)`, NCHW in and out."""

    def __init__(self, arch: UNetArch):
        super().__init__()
        chans, n = arch.block_out_channels, arch.layers_per_block
        self.arch = arch
        self.time_embedding = TimestepEmbedding(chans[0], arch.time_embed_dim)
        self.conv_in = nn.Conv2d(arch.in_channels, chans[0], 3, padding=1)
        self.down_blocks = []
        ch, skips = chans[0], [chans[0]]
        for level, out_c in enumerate(chans):
            last = level == len(chans) - 1
            self.down_blocks.append(UNetBlock(arch, [ch] + [out_c] * (n - 1), out_c, arch.attention[level],
                                              None if last else Downsample2D))
            ch = out_c
            skips += [out_c] * (n if last else n + 1)
        self.mid_block = MidBlock(arch, ch)
        self.up_blocks = []
        for level in reversed(range(len(chans))):
            out_c, ins = chans[level], []
            for _ in range(n + 1):
                ins.append(ch + skips.pop())
                ch = out_c
            self.up_blocks.append(UNetBlock(arch, ins, out_c, arch.attention[level], Upsample2D if level else None))
        self.conv_norm_out = GroupNorm(arch.norm_num_groups, chans[0], RESNET_EPS)
        self.conv_out = nn.Conv2d(chans[0], arch.out_channels, 3, padding=1)

    def __call__(self, sample: mx.array, timestep: mx.array, context: mx.array) -> mx.array:
        """sample [B, C, H, W] (NCHW, as every backend), timestep a scalar, context [B, 77, 768]."""
        x = sample.transpose(0, 2, 3, 1)
        t = mx.broadcast_to(timestep, (x.shape[0],))
        temb = self.time_embedding(timestep_embedding(t, self.arch.block_out_channels[0]).astype(x.dtype))
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, states = block(x, temb, context)
            skips += states
        x = self.mid_block(x, temb, context)
        for block in self.up_blocks:
            x, _ = block(x, temb, context, skips)
        x = self.conv_out(nn.silu(self.conv_norm_out(x)))
        return x.transpose(0, 3, 1, 2)


def mlx_layout(diffusers_weights: dict[str, np.ndarray], dtype: mx.Dtype) -> list[tuple[str, mx.array]]:
    """diffusers-named numpy weights as MLX arrays of `dtype`, conv kernels OIHW -> OHWI.
    Consumes the dict and evaluates tensor by tensor, so a 3.4 GB checkpoint is held about
    once, not in numpy, fp32 and `dtype` copies at the same time."""
    out = []
    while diffusers_weights:
        key, value = diffusers_weights.popitem()
        if value.ndim == 4:
            value = np.ascontiguousarray(value.transpose(0, 2, 3, 1))
        array = mx.array(value).astype(dtype)
        mx.eval(array)
        out.append((key, array))
    return out


def load_unet(arch: UNetArch, path: str | Path, dtype: mx.Dtype) -> UNet:
    """The UNet of `arch` with the weights of the LDM single-file checkpoint at `path`,
    evaluated (resident) in `dtype` on the default device. A checkpoint of another
    architecture raises from the key mapping, never half-loads."""
    model = UNet(arch)
    model.load_weights(mlx_layout(ldm_to_diffusers(arch, read_unet(path)), dtype), strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model
