"""Every tensor of an SD1.5-family UNet: its key in the LDM single-file checkpoint, its key in
diffusers, and its shape. This table is the harness's one LDM-to-backend key mapping; the
synthetic writer, the loaders and the tests all read it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from workers.contract.presets import UNetArch

LDM_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class TensorSpec:
    ldm_key: str  # without LDM_PREFIX
    diffusers_key: str
    shape: tuple[int, ...]
    kind: str  # "weight" (conv/linear), "bias", "norm_weight", "norm_bias"

    @property
    def fan_in(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n


def _linear(ldm: str, dif: str, out_f: int, in_f: int, bias: bool = True) -> Iterator[TensorSpec]:
    yield TensorSpec(f"{ldm}.weight", f"{dif}.weight", (out_f, in_f), "weight")
    if bias:
        yield TensorSpec(f"{ldm}.bias", f"{dif}.bias", (out_f,), "bias")


def _conv(ldm: str, dif: str, out_c: int, in_c: int, k: int) -> Iterator[TensorSpec]:
    yield TensorSpec(f"{ldm}.weight", f"{dif}.weight", (out_c, in_c, k, k), "weight")
    yield TensorSpec(f"{ldm}.bias", f"{dif}.bias", (out_c,), "bias")


def _norm(ldm: str, dif: str, c: int) -> Iterator[TensorSpec]:
    yield TensorSpec(f"{ldm}.weight", f"{dif}.weight", (c,), "norm_weight")
    yield TensorSpec(f"{ldm}.bias", f"{dif}.bias", (c,), "norm_bias")


def _resnet(ldm: str, dif: str, in_c: int, out_c: int, temb: int) -> Iterator[TensorSpec]:
    yield from _norm(f"{ldm}.in_layers.0", f"{dif}.norm1", in_c)
    yield from _conv(f"{ldm}.in_layers.2", f"{dif}.conv1", out_c, in_c, 3)
    yield from _linear(f"{ldm}.emb_layers.1", f"{dif}.time_emb_proj", out_c, temb)
    yield from _norm(f"{ldm}.out_layers.0", f"{dif}.norm2", out_c)
    yield from _conv(f"{ldm}.out_layers.3", f"{dif}.conv2", out_c, out_c, 3)
    if in_c != out_c:
        yield from _conv(f"{ldm}.skip_connection", f"{dif}.conv_shortcut", out_c, in_c, 1)


def _transformer(ldm: str, dif: str, c: int, context: int) -> Iterator[TensorSpec]:
    """SpatialTransformer with one BasicTransformerBlock; key names below it are shared."""
    yield from _norm(f"{ldm}.norm", f"{dif}.norm", c)
    yield from _conv(f"{ldm}.proj_in", f"{dif}.proj_in", c, c, 1)
    block = "transformer_blocks.0"
    for attn, kv in (("attn1", c), ("attn2", context)):
        for proj, in_f in (("to_q", c), ("to_k", kv), ("to_v", kv)):
            name = f"{block}.{attn}.{proj}"
            yield from _linear(f"{ldm}.{name}", f"{dif}.{name}", c, in_f, bias=False)
        name = f"{block}.{attn}.to_out.0"
        yield from _linear(f"{ldm}.{name}", f"{dif}.{name}", c, c)
    inner = 4 * c
    name = f"{block}.ff.net.0.proj"  # GEGLU: one projection to value and gate
    yield from _linear(f"{ldm}.{name}", f"{dif}.{name}", 2 * inner, c)
    name = f"{block}.ff.net.2"
    yield from _linear(f"{ldm}.{name}", f"{dif}.{name}", c, inner)
    for n in ("norm1", "norm2", "norm3"):
        yield from _norm(f"{ldm}.{block}.{n}", f"{dif}.{block}.{n}", c)
    yield from _conv(f"{ldm}.proj_out", f"{dif}.proj_out", c, c, 1)


def tensor_specs(arch: UNetArch) -> list[TensorSpec]:
    """All tensors of `arch` in LDM module order (the order synthetic weights are drawn in)."""
    chans, attn, n_layers = arch.block_out_channels, arch.attention, arch.layers_per_block
    temb, ctx = arch.time_embed_dim, arch.cross_attention_dim
    specs: list[TensorSpec] = []
    specs += _linear("time_embed.0", "time_embedding.linear_1", temb, chans[0])
    specs += _linear("time_embed.2", "time_embedding.linear_2", temb, temb)
    specs += _conv("input_blocks.0.0", "conv_in", chans[0], arch.in_channels, 3)

    ch, skips, idx = chans[0], [chans[0]], 1
    for level, out_c in enumerate(chans):
        for layer in range(n_layers):
            specs += _resnet(f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{layer}", ch, out_c, temb)
            if attn[level]:
                specs += _transformer(f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{layer}", out_c, ctx)
            ch = out_c
            skips.append(ch)
            idx += 1
        if level != len(chans) - 1:
            specs += _conv(f"input_blocks.{idx}.0.op", f"down_blocks.{level}.downsamplers.0.conv", ch, ch, 3)
            skips.append(ch)
            idx += 1

    specs += _resnet("middle_block.0", "mid_block.resnets.0", ch, ch, temb)
    specs += _transformer("middle_block.1", "mid_block.attentions.0", ch, ctx)
    specs += _resnet("middle_block.2", "mid_block.resnets.1", ch, ch, temb)

    idx = 0
    for up, level in enumerate(reversed(range(len(chans)))):
        out_c = chans[level]
        for layer in range(n_layers + 1):
            specs += _resnet(f"output_blocks.{idx}.0", f"up_blocks.{up}.resnets.{layer}", ch + skips.pop(), out_c, temb)
            sub = 1
            if attn[level]:
                specs += _transformer(f"output_blocks.{idx}.1", f"up_blocks.{up}.attentions.{layer}", out_c, ctx)
                sub = 2
            ch = out_c
            if level != 0 and layer == n_layers:
                specs += _conv(f"output_blocks.{idx}.{sub}.conv", f"up_blocks.{up}.upsamplers.0.conv", ch, ch, 3)
            idx += 1

    specs += _norm("out.0", "conv_norm_out", ch)
    specs += _conv("out.2", "conv_out", arch.out_channels, ch, 3)
    return specs


def ldm_to_diffusers(arch: UNetArch, ldm: Mapping[str, object]) -> dict[str, object]:
    """Rename an LDM UNet state dict (keys with or without the `model.diffusion_model.` prefix)
    to diffusers names. Missing, surplus or misshapen tensors raise, so a checkpoint of another
    architecture is never half-loaded."""
    stripped = {k.removeprefix(LDM_PREFIX): v for k, v in ldm.items()}
    specs = tensor_specs(arch)
    expected = {s.ldm_key for s in specs}
    missing = sorted(expected - stripped.keys())
    surplus = sorted(stripped.keys() - expected)
    if missing or surplus:
        raise ValueError(
            f"checkpoint does not match UNet preset {arch.name!r}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(surplus)} unexpected (e.g. {surplus[:3]})"
        )
    out: dict[str, object] = {}
    for s in specs:
        value = stripped[s.ldm_key]
        shape = tuple(getattr(value, "shape", ()))
        if shape != s.shape:
            raise ValueError(f"{s.ldm_key}: shape {shape} in checkpoint, {s.shape} expected for {arch.name!r}")
        out[s.diffusers_key] = value
    return out
