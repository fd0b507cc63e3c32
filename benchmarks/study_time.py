"""Study time both ways: one matrix run with spawned workers and with the fork server, interleaved.

    uv run python benchmarks/study_time.py [MATRIX] [--rounds 1] [--runs N] [--env NAME=PYTHON] [--out DIR]

Each round runs `orchestrate MATRIX` twice, once per `timing.worker_start` (`spawn`, then
`forkserver`; the next round the other way round, so a drifting host hits both alike), from a
copy of the matrix beside it that differs only in that key. Prints each session's wall time, the
median run's wall and load time, the ratios fork server / spawn, and per cell the latency and
energy medians of both ways with whether each lies within the other's p10-p90. The session
folders stay under --out. A timing, not a test: no test asserts it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent
MODES = ("spawn", "forkserver")


def matrix_copy(matrix: Path, mode: str) -> Path:
    """MATRIX with `[timing] worker_start = mode`, beside it so its relative paths still hold."""
    text = matrix.read_text()
    key = f'worker_start = "{mode}"'
    text = re.sub(r"(?m)^\s*worker_start\s*=.*$", "", text)
    if re.search(r"(?m)^\[timing\]\s*$", text):
        text = re.sub(r"(?m)^\[timing\]\s*$", f"[timing]\n{key}", text, count=1)
    else:
        text += f"\n[timing]\n{key}\n"
    copy = matrix.with_name(f".{matrix.stem}.study-time-{mode}.toml")
    copy.write_text(text)
    return copy


def run_session(matrix: Path, mode: str, out: Path, extra: list[str]) -> tuple[float, Path | None, int]:
    copy = matrix_copy(matrix, mode)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "orchestrator", str(copy), "--out", str(out), *extra],
                              cwd=REPO, stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - t0
    finally:
        copy.unlink()
    folders = sorted(out.glob("*/summary.json"))
    return seconds, folders[-1].parent if folders else None, proc.returncode


def _runs(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines() if line.strip()]


def _within(value: float | None, low: float | None, high: float | None) -> bool:
    return None not in (value, low, high) and low <= value <= high  # type: ignore[operator]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("matrix", nargs="?", default=str(REPO / "examples" / "quick.toml"))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--runs", type=int, default=None, help="passed to orchestrate (overrides timing.runs)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON", help="passed to orchestrate")
    p.add_argument("--out", default=None, help="where the session folders go (default: a new temporary folder)")
    args = p.parse_args()
    matrix = Path(args.matrix).resolve()
    out = Path(args.out or tempfile.mkdtemp(prefix="cdb-study-time-"))
    extra = [a for e in args.env for a in ("--env", e)] + (["--runs", str(args.runs)] if args.runs else [])
    sessions: dict[str, list[tuple[float, Path]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            seconds, folder, code = run_session(matrix, mode, out / f"{mode}-{r}", extra)
            if folder is None or code != 0:
                print(f"round {r} {mode}: orchestrate exited {code}; stopping", file=sys.stderr)
                return 1
            sessions[mode].append((seconds, folder))
            runs = _runs(folder)
            print(f"round {r} {mode}: session {seconds:.1f} s, {sum(x['status'] == 'ok' for x in runs)}/{len(runs)} "
                  f"runs ok, {folder}", flush=True)
    stats = {}
    for mode in MODES:
        runs = [x for _, f in sessions[mode] for x in _runs(f)]
        stats[mode] = {"session_s": sum(s for s, _ in sessions[mode]),
                       "run_wall_s": median(x["wall_s"] for x in runs if x.get("wall_s") is not None),
                       "run_load_s": median(x["load_s"] for x in runs if x.get("load_s") is not None),
                       "worker_start": sorted({x.get("worker_start") or "?" for x in runs})}
        s = stats[mode]
        print(f"{mode:>10}: sessions {s['session_s']:.1f} s; median run wall {s['run_wall_s']:.2f} s, "
              f"load {s['run_load_s']:.2f} s; runs started by {', '.join(s['worker_start'])}")
    f, sp = stats["forkserver"], stats["spawn"]
    print(f"forkserver / spawn: sessions {f['session_s'] / sp['session_s']:.3f}, run wall "
          f"{f['run_wall_s'] / sp['run_wall_s']:.3f}, load {f['run_load_s'] / max(sp['run_load_s'], 1e-9):.3f}")
    last = {mode: {c["cell_id"]: c for c in json.loads((sessions[mode][-1][1] / "summary.json").read_text())["cells"]}
            for mode in MODES}
    agree = True
    for cell_id, a in last["spawn"].items():
        b = last["forkserver"].get(cell_id, {})
        for name, digits in (("latency_ms", 3), ("energy_per_step_j", 4)):
            key = "latency_ms_median" if name == "latency_ms" else name
            va, vb = a.get(key), b.get(key)
            if va is None and vb is None:
                continue
            ok = _within(va, b.get(f"{name}_p10"), b.get(f"{name}_p90")) and _within(vb, a.get(f"{name}_p10"),
                                                                                        a.get(f"{name}_p90"))
            agree &= ok
            print(f"  {cell_id} {name}: spawn {_fmt(va, digits)} [{_fmt(a.get(f'{name}_p10'), digits)}-"
                  f"{_fmt(a.get(f'{name}_p90'), digits)}], forkserver {_fmt(vb, digits)} "
                  f"[{_fmt(b.get(f'{name}_p10'), digits)}-{_fmt(b.get(f'{name}_p90'), digits)}]: "
                  f"{'agree' if ok else 'DIFFER'}")
    print("medians agree within each other's p10-p90" if agree else "some medians differ beyond the other's p10-p90")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
