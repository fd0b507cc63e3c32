"""Host CPU drift: why one launch-bound GPU cell's step time wanders within and between processes.

    python3 benchmarks/host_drift.py --matrix examples/sd15-cuda.toml \
        --cells diffusers-cuda-fp16,diffusers-cuda-fp16,diffusers-cuda-fp32 --env diffusers=$(which python3) --out DIR
    python3 benchmarks/host_drift.py --summarize DIR

A launch-bound step (the GPU waits on Python and the kernel launches) runs at the speed of the one
host CPU that runs the process. This measures that CPU's speed from outside: a probe process on
another CPU (`--probe-cpu`) times a fixed pure-Python loop in slices of a few ms for the whole
command, and a sampler reads `/proc/stat` (steal time) and the GPU's SM clock (NVML, where
installed) every 50 ms. First the probe runs alone, then beside a busy probe on every other CPU
(does load on this VM's other CPUs slow one?), then alone again; then each of `--cells` runs as a
fresh bare loop (`benchmarks/overhead.py`'s, same weights and inputs) for `--iterations` steps,
recording per step its start and end and the thread's on-CPU and run-queue time
(`/proc/thread-self/schedstat`, which this kernel may keep at tick resolution: summed, not per step).
Writes DIR/host_drift.json and prints per loop the latency, the probe's speed during it, steal, the
SM clock and the step thread's on-CPU share. Linux only. A timing, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from overhead import BARE, REPO, prepare

from orchestrator.config.envs import discover, parse_overrides
from orchestrator.config.matrix import load_matrix
from orchestrator.errors import UserError

# argv: CPU, stop file, output file[, additions per slice (100000), seconds asleep between slices (0)].
# It also stops once its parent is gone (a killed command leaves no probe spinning). The parent's pid
# is written in, that of the process importing this module (which starts the probes): read with
# getppid() in the probe, a parent that died before the probe's first line would go unnoticed.
PROBE = r"""
import json, os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
stop, rows, parent = sys.argv[2], [], PARENT_PID
n, pause = (int(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) > 5 else (100000, 0.0)
while not os.path.exists(stop) and os.getppid() == parent:
    t0 = time.monotonic_ns(); s = 0
    for i in range(n):
        s += i
    rows.append((t0, time.monotonic_ns()))
    if pause:
        time.sleep(pause)
json.dump(rows, open(sys.argv[3], "w"))
""".replace("PARENT_PID", str(os.getpid()))

BUSY = ("import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
        f"while not os.path.exists(sys.argv[2]) and os.getppid() == {os.getpid()}: pass\n")


def _sample(stop: threading.Event, rows: list) -> None:
    """/proc/stat's aggregate CPU counters and the GPU's SM clock (0 without NVML), every 50 ms."""
    try:
        import pynvml
        pynvml.nvmlInit()
        gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
        def clock() -> int:
            return pynvml.nvmlDeviceGetClockInfo(gpu, pynvml.NVML_CLOCK_SM)
    except Exception:  # no NVML: the CPU side still tells
        def clock() -> int:
            return 0
    while not stop.is_set():
        with open("/proc/stat") as f:
            counters = [int(x) for x in f.readline().split()[1:]]
        rows.append((time.monotonic_ns(), counters, clock()))
        time.sleep(0.05)


def _phase(marks: list, name: str, seconds: float) -> None:
    marks.append((name, time.monotonic_ns()))
    time.sleep(seconds)
    marks.append((f"end {name}", time.monotonic_ns()))


def measure(args: argparse.Namespace) -> Path:
    cells = args.cells.split(",")
    # every cell named is checked before any is prepared (an env synced, a checkpoint hashed), then
    # each distinct one is pinned once, before the probe starts: a bad cell or matrix is refused at
    # once, and no checkpoint's sha256 runs inside the phases or between the loops
    m = load_matrix(Path(args.matrix), set(discover(parse_overrides(args.env))))
    for cell_id in cells:
        m.cell(cell_id)
    prepared = {cell_id: prepare(Path(args.matrix), cell_id, args.env) for cell_id in dict.fromkeys(cells)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stop_file = out / ".stop"
    stop_file.unlink(missing_ok=True)
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(args.probe_cpu), str(stop_file), str(out / "probe.json")])
    stop, samples, marks = threading.Event(), [], []
    sampler = threading.Thread(target=_sample, args=(stop, samples))
    sampler.start()
    loops = []
    try:
        _phase(marks, "probe alone", args.phase_s)
        busy_stop = out / ".busy-stop"
        busy = [subprocess.Popen([sys.executable, "-c", BUSY, str(c), str(busy_stop)])
                for c in sorted(os.sched_getaffinity(0) - {args.probe_cpu})]
        _phase(marks, f"beside {len(busy)} busy CPUs", args.phase_s)
        busy_stop.touch()
        for b in busy:
            b.wait()
        busy_stop.unlink()
        _phase(marks, "probe alone again", args.phase_s)
        for k, cell_id in enumerate(cells):
            _, _, env, _, spec = prepared[cell_id]
            steps = out / f"loop-{k}-{cell_id}.json"
            bare = {**spec, "iterations": args.iterations, "steps_out": str(steps)}
            marks.append((f"loop {k} {cell_id}", time.monotonic_ns()))
            r = subprocess.run([str(env.python), "-c", BARE, json.dumps(bare)], cwd=REPO, env=env.worker_environ())
            marks.append((f"end loop {k} {cell_id}", time.monotonic_ns()))
            if r.returncode != 0:
                print(f"loop {k} ({cell_id}) failed with exit code {r.returncode}", file=sys.stderr)
                continue
            loops.append({"cell": cell_id, "file": steps.name})
            print(f"loop {k} {cell_id}: done", flush=True)
        time.sleep(2)
    finally:
        stop.set()
        sampler.join()
        stop_file.touch()
        probe.wait()
        stop_file.unlink()
    (out / "host_drift.json").write_text(json.dumps(
        {"probe_cpu": args.probe_cpu, "cpus": os.cpu_count(), "marks": marks, "loops": loops, "samples": samples}))
    return out


def summarize(out: Path) -> None:
    run = json.loads((out / "host_drift.json").read_text())
    probe = np.asarray(json.loads((out / "probe.json").read_text()), dtype=np.int64)
    slice_ms = (probe[:, 1] - probe[:, 0]) / 1e6
    t_s = np.asarray([s[0] for s in run["samples"]], dtype=np.int64)
    counters = np.asarray([s[1] for s in run["samples"]], dtype=np.int64)
    sm = np.asarray([s[2] for s in run["samples"]])
    marks = dict(run["marks"])

    def probe_between(a: int, b: int) -> np.ndarray:
        return slice_ms[(probe[:, 0] >= a) & (probe[:, 1] <= b)]

    def steal_share(a: int, b: int) -> float:
        c = counters[(t_s >= a) & (t_s <= b)]
        return float((c[-1, 7] - c[0, 7]) / max(c[-1].sum() - c[0].sum(), 1)) if len(c) > 1 else float("nan")

    alone = probe_between(marks["probe alone"], marks["end probe alone"])
    ref = float(np.median(alone))
    print(f"probe on CPU {run['probe_cpu']} of {run['cpus']}, ms per slice, median [p10-p90] (x the probe alone's median):")
    for name in ("probe alone", next(n for n in marks if n.startswith("beside")), "probe alone again"):
        s = probe_between(marks[name], marks[f"end {name}"])
        print(f"  {name:24s} {np.median(s):7.3f} [{np.percentile(s, 10):.3f}-{np.percentile(s, 90):.3f}]"
              f"  (x{np.median(s) / ref:.2f}; slices over 1.5x: {np.mean(s > 1.5 * ref):.0%})"
              f"  steal {steal_share(marks[name], marks[f'end {name}']):.2%}")
    for k, loop in enumerate(run["loops"]):
        t0, t1, on_cpu, queued, cpu = np.asarray(json.loads((out / loop["file"]).read_text()), dtype=np.int64).T
        lat = (t1 - t0) / 1e6
        during = [probe_between(a, b) for a, b in zip(t0, t1)]
        p = np.asarray([np.median(d) if len(d) else np.nan for d in during])
        ok = ~np.isnan(p)
        window = (t_s >= t0[0]) & (t_s <= t1[-1])
        print(f"loop {k} {loop['cell']}: {len(lat)} steps on CPU(s) {sorted(set(cpu.tolist()))}")
        print(f"  latency ms median {np.median(lat):.2f} [p10 {np.percentile(lat, 10):.2f} - p90 {np.percentile(lat, 90):.2f}]"
              f"  on-CPU {on_cpu.sum() / (t1 - t0).sum():.0%} of the steps' wall, run-queue wait {queued.sum() / 1e6:.1f} ms in all")
        print(f"  probe during it x{np.nanmedian(p) / ref:.2f} (slices over 1.5x: {np.mean(p[ok] > 1.5 * ref):.0%}),"
              f" corr(step, probe) {np.corrcoef(lat[ok], p[ok])[0, 1]:+.2f}, steal {steal_share(t0[0], t1[-1]):.2%},"
              f" SM clock {sm[window].min()}-{sm[window].max()} MHz")
        chunks = np.array_split(np.arange(len(lat)), 20)
        print("  latency ms per 5% of the steps: " + " ".join(f"{np.median(lat[c]):.0f}" for c in chunks))
        print("  probe x per 5% of the steps:    " + " ".join(f"{np.nanmedian(p[c]) / ref:.1f}" for c in chunks))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--matrix", default=str(REPO / "examples" / "sd15-cuda.toml"))
    p.add_argument("--cells", default="diffusers-cuda-fp16", help="comma-separated cell ids, one fresh loop each")
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON", help="use an existing interpreter for env NAME")
    p.add_argument("--probe-cpu", type=int, default=None, help="the probe's CPU (default: the highest this process may use)")
    p.add_argument("--phase-s", type=float, default=8.0, help="seconds of each probe-only phase")
    p.add_argument("--out", default="host-drift")
    p.add_argument("--summarize", metavar="DIR", help="print the summary of an earlier run's DIR and stop")
    args = p.parse_args()
    if args.summarize:
        summarize(Path(args.summarize))
        return 0
    if args.probe_cpu is None:
        args.probe_cpu = max(os.sched_getaffinity(0))
    try:
        summarize(measure(args))
    except UserError as e:
        print(e.printed(), file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
