"""A check of the harness's NVIDIA figures from outside it: one process, no protocol, no meter
thread, no cooldown logic. It builds the same UNet from the same checkpoint and pinned inputs,
runs it back to back for a fixed time and reads NVML's total-energy counter around the loop.

    PYTHON benchmarks/bare_nvml.py CHECKPOINT [--preset sd15] [--precision fp16]
        [--compile default|reduce-overhead] [--seconds 15] [--idle-s 6] [--settle-s 6] [--pairs 1]

Per loop it prints ms/step, gross J/step and net J/step (gross minus the loaded-idle power
measured in the same process just before, times the step time), as JSON lines. Loops come in
pairs, in alternating order: one without a synchronize between steps (what a pipeline does) and
one with a synchronize after every step (what the harness does to time each step), so a
difference between them is the cost of per-step timing, not of the harness.

NVML's counter moves in steps (~100 ms on H100), so every read here waits for the counter to
change and takes that moment as the read's time; the loop starts right after such a change, and
the idle tail between the loop's end and the next change is taken out at the idle power."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.contract.inputs import pinned_inputs  # noqa: E402
from workers.contract.presets import preset  # noqa: E402
from workers.unet.torch_unet import build_unet  # noqa: E402

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def counter_step(nv, handle, poll_s: float = 0.0005) -> tuple[float, float]:
    """(perf_counter seconds, joules) at the first counter change observed from now."""
    first = nv.nvmlDeviceGetTotalEnergyConsumption(handle)
    while (mj := nv.nvmlDeviceGetTotalEnergyConsumption(handle)) == first:
        time.sleep(poll_s)
    return time.perf_counter(), mj / 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--preset", default="sd15")
    p.add_argument("--precision", default="fp16", choices=sorted(DTYPES))
    p.add_argument("--compile", default=None, choices=["default", "reduce-overhead"])
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--idle-s", type=float, default=6.0)
    p.add_argument("--settle-s", type=float, default=6.0, help="wait before measuring idle power")
    p.add_argument("--pairs", type=int, default=1, help="pairs of loops (unsynchronized, synchronized), order alternating")
    args = p.parse_args()

    import pynvml as nv
    import torch

    nv.nvmlInit()
    dev = torch.device(args.device)
    handle = nv.nvmlDeviceGetHandleByIndex(dev.index or 0)
    dtype = getattr(torch, DTYPES[args.precision])
    model = build_unet(preset(args.preset), args.checkpoint).to(device=dev).to(dtype=dtype)
    inp = pinned_inputs(args.resolution)
    latent = torch.from_numpy(inp.latent).to(dev, dtype)
    text = torch.from_numpy(inp.text_embedding).to(dev, dtype)
    t = torch.tensor(inp.timestep, device=dev)
    forward = torch.compile(model, mode=args.compile) if args.compile else model

    def step() -> None:
        with torch.inference_mode():
            forward(latent, t, encoder_hidden_states=text, return_dict=False)

    t0 = time.perf_counter()
    for _ in range(3):
        step()
        torch.cuda.synchronize(dev)
    warmup_s = time.perf_counter() - t0

    orders = [(False, True) if i % 2 == 0 else (True, False) for i in range(args.pairs)]
    for sync_each in [s for pair in orders for s in pair]:
        torch.cuda.synchronize(dev)
        time.sleep(args.settle_s)
        a = counter_step(nv, handle)
        time.sleep(args.idle_s)
        b = counter_step(nv, handle)
        idle_w = (b[1] - a[1]) / (b[0] - a[0])
        start, e_start = counter_step(nv, handle)
        n = 0
        while time.perf_counter() - start < args.seconds:
            step()
            if sync_each:
                torch.cuda.synchronize(dev)
            n += 1
        torch.cuda.synchronize(dev)
        end = time.perf_counter()
        t_after, e_after = counter_step(nv, handle)
        window_s = end - start
        gross_j = (e_after - e_start) - idle_w * (t_after - end)
        print(json.dumps({
            "gpu": nv.nvmlDeviceGetName(handle), "precision": args.precision, "compile": args.compile,
            "sync_each_step": sync_each, "warmup_s": round(warmup_s, 2), "steps": n, "window_s": window_s,
            "ms_per_step": window_s / n * 1e3, "idle_w": idle_w, "active_w": gross_j / window_s,
            "gross_j_per_step": gross_j / n, "net_j_per_step": (gross_j - idle_w * window_s) / n,
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
