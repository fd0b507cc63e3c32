"""Per-round spread and the permutation test of a per-command effect (`benchmarks/overhead.py`'s
`command_spread`, the test `--summarize` runs) over rounds.jsonl: whether the commands' median
quotients (harness / bare) spread more than the rounds shuffled among the commands would.
`uv run python commands.py [--skip K]` leaves out command K (0-based)."""
import statistics as st
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "benchmarks"))
from overhead import SHUFFLES, command_spread, read_rounds  # noqa: E402

harness, bare, commands, files = read_rounds([str(HERE / "rounds.jsonl")])
skip = int(sys.argv[2]) if sys.argv[1:2] == ["--skip"] else None
kept = [i for i, k in enumerate(commands) if k != skip]
for name, side in (("harness", harness), ("bare", bare)):
    ms = [side[i][0] for i in kept]
    print(f"{name}: runs' medians {min(ms):.3f}-{max(ms):.3f} ms")
q = np.log([harness[i][0] / bare[i][0] for i in kept])
print(f"{len(q)} rounds in {len({commands[i] for i in kept})} commands; sd of the per-round log quotient {st.stdev(q):.4f}")
variance, _, p = command_spread(q, [commands[i] for i in kept], [files[i] for i in kept])
print(f"variance of the commands' median log quotients {variance:.3g}; permutation p {p:.3f} ({SHUFFLES} shuffles)")
