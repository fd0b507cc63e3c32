"""Per-round spread and a permutation test of a per-command effect over rounds.jsonl: whether
the commands' median quotients (harness / bare) spread more than random groups of 10 rounds would.
`python3 commands.py [--skip K]` leaves out command K (0-based)."""
import json
import math
import random
import statistics as st
import sys
from pathlib import Path

rows = [json.loads(line) for line in (Path(__file__).parent / "rounds.jsonl").read_text().splitlines()]
commands = []
for r in rows:
    commands.append(commands[-1] + (r["round"] == 0) if commands else 0)
skip = int(sys.argv[2]) if sys.argv[1:2] == ["--skip"] else None
kept = [(r, k) for r, k in zip(rows, commands) if k != skip]
q = [math.log(r["harness"]["median_ms"] / r["bare"]["median_ms"]) for r, _ in kept]
ks = [k for _, k in kept]
for side in ("harness", "bare"):
    ms = [r[side]["median_ms"] for r, _ in kept]
    print(f"{side}: runs' medians {min(ms):.3f}-{max(ms):.3f} ms")
print(f"{len(q)} rounds in {len(set(ks))} commands; sd of the per-round log quotient {st.stdev(q):.4f}")


def spread(labels):
    return st.pvariance([st.median([x for x, k in zip(q, labels) if k == j]) for j in sorted(set(labels))])


observed = spread(ks)
random.seed(0)
shuffled = ks[:]
higher = 0
for _ in range(2000):
    random.shuffle(shuffled)
    higher += spread(shuffled) >= observed
print(f"variance of the commands' median log quotients {observed:.3g}; permutation p {(higher + 1) / 2001:.3f} (2000 shuffles)")
