"""Which side carries the command effect: for the harness's runs, the bare loops' runs and their
quotient, whether the commands' median (log) step spreads more than the same rounds shuffled
among the commands of their file (`benchmarks/overhead.py`'s `command_spread`, the test
`--summarize` runs on the quotient). A drift of the host between commands moves both sides alike
and cancels in the quotient; a parent's own draw moves its side only.

    uv run python docs/results/2026-12-07-h100-overhead-20-commands/sides.py FILE.jsonl...
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from overhead import command_spread, read_rounds  # noqa: E402

harness, bare, commands, files = read_rounds(sys.argv[1:])
h, b = np.log([x[0] for x in harness]), np.log([x[0] for x in bare])
print(f"{len(harness)} rounds in {len(set(commands))} commands")
for name, x in (("harness", h), ("bare loop", b), ("quotient", h - b)):
    variance, _, p = command_spread(x, commands, files)
    print(f"{name}: sd of the commands' median log step {variance ** 0.5:.4f}, permutation p {p:.4f}")
