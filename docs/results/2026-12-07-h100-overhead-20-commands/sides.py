"""Which side carries the command effect: for the harness's runs, the bare loops' runs and their
quotient, whether the commands' median (log) step spreads more than the same rounds shuffled
among the commands of its file (2000 seeded shuffles, as `overhead.py --summarize` does for the
quotient).
A drift of the host between commands moves both sides alike and cancels in the quotient; a
parent's own draw moves its side only.

    uv run python docs/results/2026-12-07-h100-overhead-20-commands/sides.py FILE.jsonl...
"""
import json
import sys

import numpy as np

rows, commands, files = [], [], []
for i, path in enumerate(sys.argv[1:]):
    for line in open(path):
        r = json.loads(line)
        rows.append(r)
        commands.append(commands[-1] + (r["round"] == 0) if commands else 0)
        files.append(i)


def sections(labels):
    return np.split(np.arange(len(labels)), np.cumsum(np.unique(labels, return_counts=True)[1])[:-1])


by_command, by_file = sections(commands), sections(files)


def spread(x):
    return float(np.var([np.median(x[i]) for i in by_command]))


def permutation_p(x):
    rng = np.random.default_rng(0)
    shuffled = (np.concatenate([rng.permutation(x[i]) for i in by_file]) for _ in range(2000))
    return (sum(spread(s) >= spread(x) * (1 - 1e-9) for s in shuffled) + 1) / 2001


harness = np.log([r["harness"]["median_ms"] for r in rows])
bare = np.log([r["bare"]["median_ms"] for r in rows])
print(f"{len(rows)} rounds in {len(by_command)} commands")
for name, x in (("harness", harness), ("bare loop", bare), ("quotient", harness - bare)):
    print(f"{name}: sd of the commands' median log step {spread(x) ** 0.5:.4f}, permutation p {permutation_p(x):.4f}")
