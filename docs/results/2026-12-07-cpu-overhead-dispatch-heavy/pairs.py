"""Do the variants differ? Each call alternated its two variants' commands, so command k of one
variant ran beside command k of the other: the signed-rank test (`orchestrator/results/compare.py`,
the one `overhead.py --summarize` uses) of the differences of their median log quotients
(harness / bare), call 1's F against H and call 2's F against L. `uv run python pairs.py`."""
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parents[2] / "benchmarks"))
from overhead import read_rounds  # noqa: E402

from orchestrator.results.compare import signed_rank_test  # noqa: E402


def command_medians(path: Path) -> list[float]:
    harness, bare, commands, _ = read_rounds([str(path)])
    q = np.log([h[0] / b[0] for h, b in zip(harness, bare)])
    return [float(np.median(q[np.asarray(commands) == k])) for k in sorted(set(commands))]


for call, (a, b) in (("call1", "FH"), ("call2", "FL")):
    d = np.subtract(command_medians(HERE / call / f"{a}.jsonl"), command_medians(HERE / call / f"{b}.jsonl"))
    t = signed_rank_test(d)
    lo, hi = (math.exp(x) for x in t.hl_ci)
    print(f"{call}: {a} / {b} by command, {len(d)} pairs: {a} the higher in {int((d > 0).sum())}; Hodges-Lehmann "
          f"{math.exp(t.hl_shift):.4f} [{lo:.4f}-{hi:.4f}] at {t.hl_ci_level:.1%}, signed-rank p {t.p:.2g} ({t.method})")
