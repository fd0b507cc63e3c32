"""glibc's single-threaded fast path on the dispatch-heavy step, within one process: the tiny UNet at
64 px, batch 2, alternating blocks of steps with `__libc_single_threaded` at 1 (as in a process
that never started a thread) and at 0 (as in one that did, or that was forked from one that had;
the flag stays 0 in such a child). The process stays single-threaded throughout, so both values
are safe to set. Diffusers' own random initialization, not the pinned weights: a timing only.

    OMP_NUM_THREADS=1 PYTHONPATH=. envs/diffusers/.venv/bin/python docs/results/2026-12-07-cpu-overhead-dispatch-heavy/flag.py BLOCKS STEPS
"""
import ctypes
import math
import os
import statistics as st
import sys
import time

import torch
from diffusers import UNet2DConditionModel

from workers.contract.presets import diffusers_config, preset

flag = ctypes.c_char.in_dll(ctypes.CDLL(None), "__libc_single_threaded")
assert len(os.listdir("/proc/self/task")) == 1 and flag.value == b"\x01", "not a single-threaded process"
blocks, steps = int(sys.argv[1]), int(sys.argv[2])
model = UNet2DConditionModel(**diffusers_config(preset("tiny"))).eval()
latent, timestep, text = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 77, 768)
medians: dict[bytes, list[float]] = {b"\x01": [], b"\x00": []}
with torch.inference_mode():
    for _ in range(30):
        model(latent, timestep, text)
    for block in range(blocks):
        for value in (b"\x01", b"\x00") if block % 2 == 0 else (b"\x00", b"\x01"):
            flag.value = value
            ns = []
            for _ in range(steps):
                t0 = time.perf_counter_ns()
                model(latent, timestep, text)
                ns.append(time.perf_counter_ns() - t0)
            medians[value].append(st.median(ns) / 1e6)
flag.value = b"\x01"
assert len(os.listdir("/proc/self/task")) == 1
one, zero = st.median(medians[b"\x01"]), st.median(medians[b"\x00"])
q = [z / o for z, o in zip(medians[b"\x00"], medians[b"\x01"])]
logs = [math.log(x) for x in q]
walsh = sorted((a + b) / 2 for i, a in enumerate(logs) for b in logs[i:])
print(f"flag 1: {one:.3f} ms, flag 0: {zero:.3f} ms, ratio 0/1 {zero / one:.4f}; blocks where 0 slower: "
      f"{sum(x > 1 for x in q)} of {len(q)}; per-block quotients {min(q):.3f}-{max(q):.3f}; "
      f"Hodges-Lehmann {math.exp(walsh[len(walsh) // 2]):.4f}")
