"""vCPU placement: on which vCPU each fresh process of `benchmarks/overhead.py` ran its step, and how
fast that vCPU was while it did.

    python3 benchmarks/vcpu_placement.py --out DIR -- python3 benchmarks/overhead.py ARGS...
    python3 benchmarks/vcpu_placement.py --summarize DIR

On the GPU VMs the host's slow phases have fallen on one side of `overhead.py` for a whole call
(docs/methodology.md, "Harness overhead"); the candidate is that some vCPUs are slower than others
for long stretches and one side's processes landed on them more often. This tests it from outside
the command: one probe process pinned to each vCPU times a fixed pure-Python slice every 50 ms
(1.29-1.44 ms a slice on the H100 VM of 2026-12-06, 2.5-2.8% of a vCPU, on every vCPU alike,
so both sides share its cost), and a sampler reads every
python thread's last vCPU and CPU time from /proc every 0.25 s (and every process's parent). A run is a python process started
by the command that used at least 0.5 s of CPU and is no other sampled process's parent (which leaves out
`overhead.py` itself and the fork server); its step thread is its thread that used the most CPU.
The runs, in order of start, are matched to `overhead.py`'s round lines (harness first in even
rounds; the runs of a round the command did not finish are left out). Writes DIR/command.log (the command's output, also printed) and DIR/placement.json.gz;
the summary prints per run its side, median step, the step thread's main vCPU and that vCPU's
probe slice during the run against the call's median slice. Linux only. A timing, not a test.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from host_drift import PROBE

ROUND = re.compile(r"^round (\d+) \((harness|bare) first\): harness ([\d.]+) ms/step .* bare loop ([\d.]+) ms/step")


def _python_threads(skip: set[int], cmdlines: dict[int, str], parents: dict[int, int]) -> list[tuple[int, ...]]:
    """(pid, ppid, tid, last vCPU, CPU ticks) of every thread of every python process but `skip`;
    notes every process's parent in `parents`, so that a run is traced to the command through
    processes that are not python (`timeout`, a shell)."""
    rows: list[tuple[int, ...]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        pid = int(entry.name)
        try:
            if pid not in parents:
                parents[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if pid not in cmdlines:
                cmdlines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:300]
            if "python" not in cmdlines[pid].split(" ", 1)[0]:
                continue
            for task in os.scandir(f"/proc/{pid}/task"):
                fields = Path(f"/proc/{pid}/task/{task.name}/stat").read_text().rsplit(")", 1)[1].split()
                rows.append((pid, int(fields[1]), int(task.name), int(fields[36]), int(fields[11]) + int(fields[12])))
        except OSError:  # the process ended while read
            continue
    return rows


def _sample(stop: threading.Event, skip: set[int], samples: list, cmdlines: dict[int, str],
            parents: dict[int, int]) -> None:
    last: dict[int, int] = {}
    while not stop.is_set():
        t = time.monotonic_ns()
        for pid, ppid, tid, cpu, ticks in _python_threads(skip, cmdlines, parents):
            if ticks != last.get(tid):  # only threads that ran since the last sample
                samples.append((t, pid, ppid, tid, cpu, ticks))
                last[tid] = ticks
        time.sleep(0.25)


def measure(out: Path, command: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    stop_file = out / ".stop"
    stop_file.unlink(missing_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    probes = [subprocess.Popen([sys.executable, "-c", PROBE, str(c), str(stop_file), str(out / f".probe-{c}.json"),
                                "20000", "0.05"]) for c in cpus]
    stop = threading.Event()
    samples: list[tuple[int, ...]] = []
    cmdlines: dict[int, str] = {}
    parents: dict[int, int] = {}
    sampler = threading.Thread(target=_sample, args=(stop, {os.getpid(), *(p.pid for p in probes)}, samples, cmdlines,
                                                     parents))
    sampler.start()
    started = time.monotonic_ns()
    try:
        with open(out / "command.log", "w") as log:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                print(line, end="", flush=True)
                log.write(line)
                log.flush()
            rc = proc.wait()
    finally:
        stop.set()
        sampler.join()
        stop_file.touch()
        for p in probes:
            p.wait()
        stop_file.unlink()
    probe = {c: [(t0, t1 - t0) for t0, t1 in json.loads((out / f".probe-{c}.json").read_text())] for c in cpus}
    for c in cpus:
        (out / f".probe-{c}.json").unlink()
    with gzip.open(out / "placement.json.gz", "wt") as f:
        json.dump({"command": command, "started_ns": started, "pid": os.getpid(), "cpus": cpus, "probe": probe, "samples": samples,
                   "cmdlines": {str(k): v for k, v in cmdlines.items()}, "parents": {str(k): v for k, v in parents.items()}}, f)
    return rc


def summarize(out: Path) -> None:
    """Per run its side, median step, vCPU and that vCPU's probe slice; raises ValueError where the
    folder's files are missing or its runs and round lines do not match."""
    try:
        with gzip.open(out / "placement.json.gz", "rt") as f:
            run = json.load(f)
        lines = (out / "command.log").read_text().splitlines()
    except (OSError, ValueError) as e:
        raise ValueError(f"{out}: {getattr(e, 'strerror', None) or e}") from None
    missing = {"pid", "probe", "samples"} - set(run)
    if missing:
        raise ValueError(f"{out / 'placement.json.gz'}: not written by vcpu_placement.py (no {', '.join(sorted(missing))})")
    probe = {int(c): np.asarray(rows, dtype=np.int64).reshape(-1, 2) for c, rows in run["probe"].items()}
    ref = float(np.median(np.concatenate([p[:, 1] for p in probe.values()])))
    print(f"probe slice, call median {ref / 1e6:.3f} ms; per vCPU, median and share of slices over 1.5x the call's median:")
    print("  " + "  ".join(f"{c}: x{np.median(p[:, 1]) / ref:.2f} {np.mean(p[:, 1] > 1.5 * ref):.0%}"
                           for c, p in sorted(probe.items())))
    s = np.asarray(run["samples"], dtype=np.int64).reshape(-1, 6)
    t, pid, ppid, tid, cpu, ticks = s.T
    # as first seen (an orphan's is 1 later); captures before "parents" have only the sampled python processes'
    parent = {int(p): int(pp) for p, pp in zip(pid[::-1], ppid[::-1])}
    parent.update({int(p): int(pp) for p, pp in run.get("parents", {}).items()})

    def in_command(p: int) -> bool:
        for _ in range(len(parent)):  # bounded: a reused pid could close a loop
            if p not in parent:
                return False
            p = parent[p]
            if p == run["pid"]:
                return True
        return False

    used = {p: int(max(ticks[(pid == p) & (tid == x)].max() for x in set(tid[pid == p].tolist())))
            for p in set(pid.tolist()) if in_command(p)}
    hz = os.sysconf("SC_CLK_TCK")
    busy = {p for p, u in used.items() if u >= 0.5 * hz}
    parents = set(ppid[np.isin(pid, list(busy))].tolist())
    runs = sorted(busy - parents, key=lambda p: int(t[pid == p].min()))
    rounds = [ROUND.match(line) for line in lines]
    expected = []
    for m in filter(None, rounds):
        h, b = ("harness", float(m[3])), ("bare", float(m[4]))
        expected += [h, b] if m[2] == "harness" else [b, h]
    if not len(expected) <= len(runs) <= len(expected) + 2:
        raise ValueError(f"{len(runs)} run processes sampled against {len(expected)} runs in {out / 'command.log'}")
    if len(runs) > len(expected):
        print(f"{len(runs) - len(expected)} run(s) after the last round line (a round cut short) left out")
        runs = runs[:len(expected)]
    rows = []
    print("run  side     median ms  step thread's vCPUs (share of samples)  its probe slice x the call's median")
    for k, (p, (side, median)) in enumerate(zip(runs, expected)):
        mine = pid == p
        step = max(set(tid[mine].tolist()), key=lambda x: int(ticks[mine & (tid == x)].max()))
        at = mine & (tid == step)
        vcpus, counts = np.unique(cpu[at], return_counts=True)
        slow = [probe[int(c)][np.abs(probe[int(c)][:, 0] - ts) < 0.5e9, 1] for ts, c in zip(t[at], cpu[at])]
        speed = float(np.median(np.concatenate(slow))) / ref if any(len(x) for x in slow) else float("nan")
        main = int(vcpus[np.argmax(counts)])
        rows.append((side, median, main, speed))
        print(f"{k:3d}  {side:7s}  {median:9.3f}  " + ", ".join(
            f"{int(c)} ({n / counts.sum():.0%})" for c, n in sorted(zip(vcpus, counts), key=lambda x: -x[1])[:4]).ljust(38)
            + f"  x{speed:.2f}")
    for side in ("harness", "bare"):
        mine = [r for r in rows if r[0] == side]
        print(f"{side}: {len(mine)} runs on vCPUs {sorted({r[2] for r in mine})}, probe x median "
              f"{np.nanmedian([r[3] for r in mine]):.2f}")
    steps, slices = np.asarray([r[1] for r in rows]), np.asarray([r[3] for r in rows])
    ok = ~np.isnan(slices)
    r_step, r_slice = (np.argsort(np.argsort(x)).astype(float) for x in (steps[ok], slices[ok]))
    rho = float(np.corrcoef(r_step, r_slice)[0, 1])
    null = [np.corrcoef(r_step, np.random.default_rng(i).permutation(r_slice))[0, 1] for i in range(2000)]
    p = float(np.mean(np.abs(null) >= abs(rho)))
    print(f"Spearman, run's median step against its vCPU's probe slice: {rho:+.2f} (permutation p "
          f"{f'{p:.2g}' if p else f'< {1 / len(null):.2g}'}, {ok.sum()} runs)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="vcpu-placement")
    p.add_argument("--summarize", metavar="DIR", help="print the summary of an earlier run's DIR and stop")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the overhead.py command to run")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.summarize and not command:
        p.error("give the command to run after --")
    rc = 0 if args.summarize else measure(Path(args.out), command)
    try:
        summarize(Path(args.summarize or args.out))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
