"""Run inside the diffusers env by the tests: what diffusers itself says about our UNet."""

import json
import sys

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from workers.contract.checkpoint import read_unet
from workers.contract.inputs import pinned_inputs
from workers.contract.layout import ldm_to_diffusers
from workers.contract.presets import PRESETS, diffusers_config

what = sys.argv[1]
if what == "shapes":
    out = {}
    for name, arch in PRESETS.items():
        with torch.device("meta"):
            m = UNet2DConditionModel(**diffusers_config(arch))
        out[name] = {k: list(v.shape) for k, v in m.state_dict().items()}
    print(json.dumps(out))
elif what == "forward":
    preset, path = sys.argv[2], sys.argv[3]
    arch = PRESETS[preset]
    with torch.device("meta"):
        model = UNet2DConditionModel(**diffusers_config(arch))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in ldm_to_diffusers(arch, read_unet(path)).items()},
                          strict=True, assign=True)
    inp = pinned_inputs(64)
    report = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        peak = [0.0]

        def hook(mod, args, output, peak=peak):
            o = output[0] if isinstance(output, tuple) else output
            peak[0] = max(peak[0], float(o.float().abs().max()))

        m = model.to(dtype)
        handles = [mod.register_forward_hook(hook) for mod in m.modules() if mod is not m]
        with torch.inference_mode():
            y = m(torch.from_numpy(inp.latent).to(dtype), torch.tensor(inp.timestep),
                  encoder_hidden_states=torch.from_numpy(inp.text_embedding).to(dtype), return_dict=False)[0]
        for h in handles:
            h.remove()
        y = y.float().numpy()
        report[name] = {"finite": bool(np.isfinite(y).all()), "std": float(y.std()), "activation_peak": peak[0]}
    print(json.dumps(report))
