"""Do the variants differ? Each call alternated its two variants' commands, so command k of one
variant ran beside command k of the other: the signed-rank test (`orchestrator/results/compare.py`,
the one `overhead.py --summarize` uses) of the differences of their median log quotients
(harness / bare), call 1's F against H and call 2's F against L (`uv run python pairs.py`), or,
given pairs, each LABEL:A:B, where A and B are `--out` files, or several joined by commas, in the
order their commands ran (command k of A beside command k of B)."""
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parents[2] / "benchmarks"))
from overhead import read_rounds  # noqa: E402

from orchestrator.results.compare import signed_rank_test  # noqa: E402


def command_medians(paths: list[Path]) -> list[float]:
    harness, bare, commands, _ = read_rounds([str(p) for p in paths])
    q = np.log([h[0] / b[0] for h, b in zip(harness, bare)])
    return [float(np.median(q[np.asarray(commands) == k])) for k in sorted(set(commands))]


def pairs(argv: list[str]) -> list[tuple[str, str, str, list[Path], list[Path]]]:
    """(label, name of A, name of B, A's files, B's files) per pair to test."""
    if not argv:
        return [(call, a, b, [HERE / call / f"{a}.jsonl"], [HERE / call / f"{b}.jsonl"])
                for call, (a, b) in (("call1", "FH"), ("call2", "FL"))]
    out = []
    for arg in argv:
        label, a, b = arg.split(":")
        files_a, files_b = [Path(f) for f in a.split(",")], [Path(f) for f in b.split(",")]
        out.append((label, files_a[0].stem, files_b[0].stem, files_a, files_b))
    return out


for call, a, b, paths_a, paths_b in pairs(sys.argv[1:]):
    d = np.subtract(command_medians(paths_a), command_medians(paths_b))
    t = signed_rank_test(d)
    lo, hi = (math.exp(x) for x in t.hl_ci)
    print(f"{call}: {a} / {b} by command, {len(d)} pairs: {a} the higher in {int((d > 0).sum())}; Hodges-Lehmann "
          f"{math.exp(t.hl_shift):.4f} [{lo:.4f}-{hi:.4f}] at {t.hl_ci_level:.1%}, signed-rank p {t.p:.2g} ({t.method})")
