"""The worker's side of one run (docs/design.md, "Protocol"): hello, setup, ready, measure,
result.

The timed loop does nothing but the step and two clock reads per iteration; everything else
(digests, conversion of the output, messages) happens outside the window.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
import traceback
from typing import Any

import numpy as np

from workers.backends import backend_module
from workers.backends.base import LoadedModel, LoadSpec, Unsupported
from workers.contract.digest import sha256_array
from workers.contract.inputs import PinnedInputs
from workers.contract.messages import Error, Hello, Measure, Message, NvmlCheck, Ready, Result, Setup, parse, wire
from workers.contract.messages import Unsupported as UnsupportedMessage
from workers.contract.presets import UNetArch
from workers.contract.protocol import PROTOCOL_VERSION, Channel


class SetupError(Exception):
    """The setup the orchestrator sent cannot be honoured (a digest mismatch, say)."""


def _protocol_streams():
    """Keep the real stdout for protocol frames and point fd 1 at stderr, so a stray print()
    in a toolchain lands in the run log instead of corrupting the message stream. Both are
    unbuffered: a buffered read would wait for a full chunk the orchestrator never sends."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(os.dup(0), "rb", buffering=0), out


def hello(env_name: str) -> Hello:
    return Hello(
        protocol=PROTOCOL_VERSION,
        pid=os.getpid(),
        uid=os.getuid() if hasattr(os, "getuid") else None,
        python=platform.python_version(),
        python_executable=sys.executable,
        platform=platform.platform(),
        machine=platform.machine(),
        env=env_name,
    )


def verified_spec(setup: Setup) -> LoadSpec:
    """Check the pinned inputs' digests again on this side, and the weights file against the guard
    the orchestrator took when it hashed it (hashing gigabytes per run would cost seconds): a
    mismatch is never benchmarked."""
    inputs, model = setup.inputs, setup.model
    for name, arr in (("latent", inputs.latent), ("text_embedding", inputs.text_embedding)):
        got = sha256_array(arr)
        if got != inputs.sha256.get(name):
            raise SetupError(f"input {name}: sha256 {got} received, {inputs.sha256.get(name)} pinned")
    try:
        changes = model.guard.changes(model.path)
    except OSError as e:
        raise SetupError(f"model {model.path}: {e.strerror} since its sha256 was verified") from None
    if changes:
        raise SetupError(f"model {model.path}: changed since its sha256 was verified ({', '.join(changes)})")
    return LoadSpec(
        cell=setup.cell,
        arch=UNetArch.from_dict(model.arch),
        model_path=model.path,
        inputs=PinnedInputs(latent=np.array(inputs.latent), text_embedding=np.array(inputs.text_embedding),
                            timestep=inputs.timestep),
        model_sha256=model.sha256,
        cache_dir=setup.cache_dir,
    )


def minor_faults() -> int:
    """This process's minor page faults so far, all threads: read around the timed loop, they say
    whether the steps' memory came from the allocator's own heap or fresh from the kernel, a state
    that changes a CPU step's speed by up to a fifth (docs/methodology.md, "Harness overhead")."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_loop(model: LoadedModel, iterations: int, min_window_s: float) -> tuple[list[int], list[int], int]:
    """Whole iterations until both `iterations` ran and the window lasted `min_window_s`: their
    starts and ends, and the minor page faults over the loop (read outside the stamps)."""
    min_ns = int(min_window_s * 1e9)
    clock = time.monotonic_ns
    starts: list[int] = []
    ends: list[int] = []
    faults = minor_faults()
    first = clock()
    while len(starts) < iterations or (ends[-1] - first) < min_ns:
        s = clock()
        model.step()
        ends.append(clock())
        starts.append(s)
    return starts, ends, minor_faults() - faults


class NvmlCheckRead:
    """Debug aid for validating the NVML meter: this process reads the GPU's energy counter
    itself right before and right after the timed loop, independently of the orchestrator's
    poller. The counter moves in ~100 ms steps, so compare over windows of several seconds."""

    def __init__(self, cell: dict[str, Any]):
        import pynvml

        pynvml.nvmlInit()
        device = cell.get("device") or ""
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        self._nv, self._h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
        self._start = (time.monotonic_ns(), self._nv.nvmlDeviceGetTotalEnergyConsumption(self._h))
        self._end = self._start

    def end(self) -> None:
        self._end = (time.monotonic_ns(), self._nv.nvmlDeviceGetTotalEnergyConsumption(self._h))

    def result(self) -> NvmlCheck:
        return NvmlCheck(start_ns=self._start[0], end_ns=self._end[0], joules=(self._end[1] - self._start[1]) / 1e3)


def run(channel: Channel, env_name: str) -> int:
    send(channel, hello(env_name))
    setup = parse(channel.recv(), Setup)
    backend = backend_module(str(setup.cell["backend"]))
    spec = verified_spec(setup)
    t0 = time.perf_counter()
    try:
        model = backend.load(spec)
    except Unsupported as e:
        send(channel, UnsupportedMessage(reason=str(e), versions=backend.versions(), facts=e.facts))
        return 0
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(setup.warmup):
        model.step()
    warmup_s = time.perf_counter() - t0
    send(channel, Ready(load_s=load_s, warmup_s=warmup_s, realized=model.realized, versions=backend.versions(),
                        model_sha256=setup.model.sha256))
    parse(channel.recv(), Measure)
    check = NvmlCheckRead(setup.cell) if setup.nvml_check else None
    starts, ends, faults = timed_loop(model, setup.iterations, setup.min_window_s)
    if check is not None:
        check.end()
    out = model.output()
    send(channel, Result(window_start_ns=starts[0], window_end_ns=ends[-1], iteration_start_ns=starts,
                         iteration_end_ns=ends, output=out, output_sha256=sha256_array(out),
                         nvml_check=check.result() if check is not None else None, minor_faults=faults))
    return 0


def send(channel: Channel, message: Message) -> None:
    channel.send(wire(message))


def serve(env_name: str) -> int:
    reader, writer = _protocol_streams()
    channel = Channel(reader, writer)
    try:
        return run(channel, env_name)
    except Exception as e:  # reported to the orchestrator as the run's failure reason
        traceback.print_exc()
        try:
            send(channel, Error(message=f"{type(e).__name__}: {e}"))
        except OSError:
            pass
        return 1
