"""Study time both ways: one matrix run with spawned workers and with the fork server, interleaved.

    uv run python benchmarks/study_time.py [MATRIX] [--rounds 1] [--runs N] [--env NAME=PYTHON] [--out DIR]
                                           [--baseline TREE [--ways baseline,forkserver]]
    uv run python benchmarks/study_time.py --summarize DIR

Each round runs `orchestrate MATRIX` twice, once per `timing.worker_start` (`spawn`, then
`forkserver`; the next round the other way round, so a drifting host hits both alike), from a
copy of the matrix beside it that differs only in that key. Prints each session's wall time, the
median run's wall and load time, the ratios fork server / spawn, and per cell the latency and
energy medians of both ways, over all rounds' runs (each way's sessions merged into OUT/<way>-all),
with whether each lies within the other's p10-p90. The session folders stay under --out;
`--summarize OUT` prints the comparison again from them. A timing, not a test: no test asserts it.

`--baseline TREE` adds a third way, first in each round: the matrix as given, run by the
orchestrator of another checkout (say `git archive` of the commit an issue was filed at, whose
workers spawn and which knows no `worker_start`), so a goal stated against "today's" study is
measured against that study's code on the same machine in the same call. `--ways` picks which
ways run (the fork server always; it is what the others are compared with).
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
MODES = ("baseline", "spawn", "forkserver")


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


def run_session(matrix: Path, mode: str, out: Path, extra: list[str],
                baseline: Path | None) -> tuple[float, Path | None, int]:
    """One session of MATRIX one way; `python -m orchestrator` from the baseline's tree runs its code."""
    copy = matrix if mode == "baseline" else matrix_copy(matrix, mode)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "orchestrator", str(copy), "--out", str(out.resolve()), *extra],
                              cwd=baseline if mode == "baseline" else REPO, stdin=subprocess.DEVNULL)
        seconds = time.monotonic() - t0
    finally:
        if copy != matrix:
            copy.unlink(missing_ok=True)
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
    p.add_argument("--summarize", metavar="OUT", default=None,
                   help="run nothing: compare the sessions an earlier run left under OUT (its --out)")
    p.add_argument("--baseline", metavar="TREE", default=None,
                   help="also run the matrix as given with the orchestrator of this checkout")
    p.add_argument("--ways", default=None,
                   help="comma-separated ways to run, of baseline, spawn, forkserver "
                        "(default: spawn,forkserver, and baseline first with --baseline)")
    args = p.parse_args()
    if args.summarize:
        return summarize(Path(args.summarize), sessions_in(Path(args.summarize)), None)
    asked = args.ways.split(",") if args.ways else ["spawn", "forkserver"] + ["baseline"] * bool(args.baseline)
    ways = [w for w in MODES if w in asked]
    unknown = set(asked) - set(MODES)
    if unknown or "forkserver" not in ways or ("baseline" in ways) != bool(args.baseline):
        p.error(f"--ways takes baseline, spawn and forkserver (forkserver always; baseline with and only with "
                f"--baseline TREE), got {args.ways or ','.join(ways)}")
    baseline = Path(args.baseline).resolve() if args.baseline else None
    if baseline is not None and not (baseline / "orchestrator" / "__main__.py").is_file():
        p.error(f"--baseline {args.baseline}: no orchestrator/__main__.py there")
    matrix = Path(args.matrix).resolve()
    out = Path(args.out or tempfile.mkdtemp(prefix="cdb-study-time-"))
    extra = [a for e in args.env for a in ("--env", e)] + (["--runs", str(args.runs)] if args.runs else [])
    sessions: dict[str, list[tuple[float, Path]]] = {m: [] for m in ways}
    for r in range(args.rounds):
        for mode in ways if r % 2 == 0 else ways[::-1]:
            seconds, folder, code = run_session(matrix, mode, out / f"{mode}-{r}", extra, baseline)
            if folder is None or code != 0:
                print(f"round {r} {mode}: orchestrate exited {code}; stopping", file=sys.stderr)
                return 1
            sessions[mode].append((seconds, folder))
            runs = _runs(folder)
            print(f"round {r} {mode}: session {seconds:.1f} s, {sum(x['status'] == 'ok' for x in runs)}/{len(runs)} "
                  f"runs ok, {folder}", flush=True)
    return summarize(out, {m: [f for _, f in sessions[m]] for m in ways},
                     {m: sum(s for s, _ in sessions[m]) for m in ways})


def sessions_in(out: Path) -> dict[str, list[Path]]:
    """The session folders a previous run of this script left under OUT, per way, in round order."""
    found: dict[str, list[Path]] = {}
    for mode in MODES:
        for round_dir in sorted(out.glob(f"{mode}-[0-9]*"), key=lambda d: int(d.name.rsplit("-", 1)[1])):
            found.setdefault(mode, []).extend(f.parent for f in sorted(round_dir.glob("*/session.json")))
    return found


def pooled(folders: list[Path], out: Path) -> Path:
    """One session folder holding every round's runs of one way (`orchestrate merge`), so the
    medians and p10-p90 below are over all of them, not the last round's."""
    if len(folders) == 1:
        return folders[0]
    if not (out / "summary.json").is_file():
        subprocess.run([sys.executable, "-m", "orchestrator", "merge", *map(str, folders), "--out", str(out)],
                       cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    return out


def summarize(out: Path, sessions: dict[str, list[Path]], session_s: dict[str, float] | None) -> int:
    """Each way's wall and load, then the fork server's against each other way: the ratios, and per
    cell whether the latency and energy medians lie within each other's p10-p90."""
    if "forkserver" not in sessions or len(sessions) < 2:
        print(f"{out}: needs fork-server sessions and another way's to compare, found {sorted(sessions) or 'none'}",
              file=sys.stderr)
        return 1
    stats = {}
    for mode, folders in sessions.items():
        runs = [x for f in folders for x in _runs(f)]
        stats[mode] = {"run_wall_s": median(x["wall_s"] for x in runs if x.get("wall_s") is not None),
                       "run_load_s": median(x["load_s"] for x in runs if x.get("load_s") is not None),
                       "worker_start": sorted({x.get("worker_start") or "spawn (no worker_start)" for x in runs})}
        s = stats[mode]
        wall = f"sessions {session_s[mode]:.1f} s; " if session_s else ""
        print(f"{mode:>10}: {len(folders)} session(s), {len(runs)} runs; {wall}median run wall "
              f"{s['run_wall_s']:.2f} s, load {s['run_load_s']:.2f} s; runs started by {', '.join(s['worker_start'])}")
    cells = {mode: {c["cell_id"]: c for c in json.loads(
                 (pooled(folders, out / f"{mode}-all") / "summary.json").read_text())["cells"]}
             for mode, folders in sessions.items()}
    f = stats["forkserver"]
    agree = True
    for other in (m for m in sessions if m != "forkserver"):
        o = stats[other]
        ratio = f"sessions {session_s['forkserver'] / session_s[other]:.3f}, " if session_s else ""
        print(f"forkserver / {other}: {ratio}run wall {f['run_wall_s'] / o['run_wall_s']:.3f}, "
              f"load {f['run_load_s'] / max(o['run_load_s'], 1e-9):.3f}")
        for cell_id, a in cells[other].items():
            b = cells["forkserver"].get(cell_id, {})
            for name, digits in (("latency_ms", 3), ("energy_per_step_j", 4)):
                key = "latency_ms_median" if name == "latency_ms" else name
                va, vb = a.get(key), b.get(key)
                if va is None and vb is None:
                    continue
                ok = _within(va, b.get(f"{name}_p10"), b.get(f"{name}_p90")) and _within(
                    vb, a.get(f"{name}_p10"), a.get(f"{name}_p90"))
                agree &= ok
                print(f"  {cell_id} {name}: {other} {_fmt(va, digits)} [{_fmt(a.get(f'{name}_p10'), digits)}-"
                      f"{_fmt(a.get(f'{name}_p90'), digits)}], forkserver {_fmt(vb, digits)} "
                      f"[{_fmt(b.get(f'{name}_p10'), digits)}-{_fmt(b.get(f'{name}_p90'), digits)}]: "
                      f"{'agree' if ok else 'DIFFER'}")
    print("medians agree within each other's p10-p90" if agree else "some medians differ beyond the other's p10-p90")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
