"""Run inside a Core ML env by the tests (the test process has no torch or coremltools)."""

import json
import sys
from pathlib import Path

import numpy as np
import torch


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def attention() -> dict:
    """Each rewrite against diffusers' own attention: the whole tiny UNet, and one attention
    layer at every sd15 self- and cross-attention shape at 512x512 (batch 1 keeps the 4096 x 4096
    score tensors small)."""
    from diffusers.models.attention_processor import Attention

    from workers.contract.checkpoint import write_synthetic
    from workers.contract.presets import PRESETS
    from workers.coreml import attention as rewrites
    from workers.unet.torch_unet import build_unet

    torch.manual_seed(0)
    out: dict = {"tiny": {}, "sd15": {}}
    path = write_synthetic(PRESETS["tiny"], 0, Path(sys.argv[2]) / "tiny.safetensors")
    unet = build_unet(PRESETS["tiny"], path)
    x, t, e = torch.randn(2, 4, 32, 32), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=e, return_dict=False)[0]
        for kind in rewrites.KERNELS:
            rewrites.apply(unet, kind)
            out["tiny"][kind] = cosine(ref, unet(x, t, encoder_hidden_states=e, return_dict=False)[0])
    arch = PRESETS["sd15"]
    for channels, tokens in zip(arch.block_out_channels[:3], (4096, 1024, 256)):
        for cross in (False, True):
            layer = Attention(channels, cross_attention_dim=768 if cross else None, heads=arch.num_heads,
                              dim_head=channels // arch.num_heads).eval()
            h = torch.randn(1, tokens, channels)
            ctx = torch.randn(1, 77, 768) if cross else None
            with torch.no_grad():
                ref = layer(h, encoder_hidden_states=ctx)
                for kind in rewrites.KERNELS:
                    layer.set_processor(rewrites.CoreMLAttnProcessor(kind))
                    name = f"{channels}ch-{tokens}tok-{'cross' if cross else 'self'}"
                    out["sd15"].setdefault(name, {})[kind] = cosine(ref, layer(h, encoder_hidden_states=ctx))
    return out


def check(package: str, request: str) -> dict:
    """verify.check on a package against a request given as JSON; a mismatch is reported."""
    from workers.coreml.request import ConversionRequest
    from workers.coreml.verify import SpecMismatch
    from workers.coreml.verify import check as spec_check

    try:
        return {"ok": True, "facts": spec_check(Path(package), ConversionRequest(**json.loads(request)))}
    except SpecMismatch as e:
        return {"ok": False, "error": str(e)}


def sd15(cache_dir: str) -> dict:
    """Convert the synthetic sd15 UNet with the harness converter at 512x512, fp16 then w4."""
    from workers.contract.checkpoint import write_synthetic
    from workers.contract.digest import sha256_file
    from workers.contract.presets import PRESETS
    from workers.coreml.artifact import Source, prepare
    from workers.coreml.cache import ConversionCache
    from workers.coreml.request import ConversionRequest

    path = write_synthetic(PRESETS["sd15"], 0, Path(cache_dir) / "sd15-seed0.safetensors")
    src = Source(PRESETS["sd15"], str(path), sha256_file(path))
    cache = ConversionCache(cache_dir)
    out = {}
    for pal in (None, "w4"):
        req = ConversionRequest("harness", "split_einsum_v2", "fp16", pal, 512, "macOS13")
        facts = prepare(req, src, cache)
        out[pal or "fp16"] = {k: facts[k] for k in ("package_bytes", "weight_bytes", "bits_per_weight", "n_weights",
                                                     "steps", "prepare_s", "cache_hit")}
        out[pal or "fp16"]["lut_ops"] = facts["spec"]["weights"]["lut_ops"]
    return out


if __name__ == "__main__":
    what = sys.argv[1]
    result = {"attention": attention, "check": lambda: check(sys.argv[2], sys.argv[3]),
              "sd15": lambda: sd15(sys.argv[2])}[what]()
    print(json.dumps(result, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
