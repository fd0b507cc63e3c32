"""Wall time of the quick example, the README's first command, as a user runs it.

    uv run python benchmarks/quick_example.py [--rounds 2]

Each round runs `orchestrate examples/quick.toml` in a fresh output folder with the shared
cache (envs synced and references cached after the first round) and prints its wall time and
how many runs were ok. A timing, not a test: a loaded machine is slower, so no test asserts it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    orchestrate = Path(sys.executable).parent / "orchestrate"
    for k in range(args.rounds):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.monotonic()
            proc = subprocess.run([str(orchestrate), str(REPO / "examples" / "quick.toml"), "--out", out],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = time.monotonic() - t0
            runs = [json.loads(line) for f in Path(out).glob("*/runs.jsonl") for line in f.read_text().splitlines()]
            ok = sum(r.get("status") == "ok" for r in runs)
            print(f"round {k + 1}: {seconds:.2f} s, exit {proc.returncode}, {ok}/{len(runs)} runs ok", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
