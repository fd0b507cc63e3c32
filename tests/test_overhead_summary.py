"""`benchmarks/overhead.py --summarize` reprints a committed call's summary from its rounds and
pools calls, and a bad file or `--out` path is one line, not a traceback after minutes of rounds."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "overhead.py"
# each test starts the script, about 2 s on the 2-core box: kept out of the unit tier
pytestmark = pytest.mark.slow

ROUNDS = REPO / "docs" / "results" / "2026-12-05-cpu-overhead-150-rounds" / "rounds.jsonl"


def _overhead(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_summarize_reprints_the_committed_150_rounds():
    p = _overhead("--summarize", str(ROUNDS))
    assert p.returncode == 0, p.stderr
    # the lines docs/results/2026-12-05-cpu-overhead-150-rounds/README.md quotes from the call itself
    assert p.stdout.splitlines() == [
        "runs' median per step, median over 150 rounds: harness 50.444 ms, bare 49.685 ms, ratio 1.015",
        "runs' p10 per step, median over 150 rounds: harness 48.452 ms, bare 47.572 ms, ratio 1.018",
        "Hodges-Lehmann ratio of the runs' medians: 1.019 [1.001-1.039] at 95.0% (Mann-Whitney p 0.041): "
        "not placed within or outside 0.98-1.02 by these rounds",
    ]


def test_summarize_pools_calls_as_one(tmp_path):
    lines = ROUNDS.read_text().splitlines(keepends=True)
    first, second = tmp_path / "call1.jsonl", tmp_path / "call2.jsonl"
    first.write_text("".join(lines[:60]))
    second.write_text("".join(lines[60:]))
    assert _overhead("--summarize", str(first), str(second)).stdout == _overhead("--summarize", str(ROUNDS)).stdout


def test_summarize_names_a_garbled_line_and_a_missing_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(ROUNDS.read_text().splitlines()[0] + "\n" + '{"harness": {"median_ms": 1}}\n')
    p = _overhead("--summarize", str(bad))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith(f"error: {bad}:2: not a round written by --out") and p.stderr.count("\n") == 1
    p = _overhead("--summarize", str(tmp_path / "absent.jsonl"))
    assert (p.returncode, p.stderr) == (2, f"error: {tmp_path / 'absent.jsonl'}: No such file or directory\n")


def test_an_unwritable_out_is_refused_before_any_round(tmp_path):
    target = tmp_path / "no-such-folder" / "rounds.jsonl"
    p = _overhead("--rounds", "1", "--out", str(target))
    assert (p.returncode, p.stdout, p.stderr) == (2, "", f"error: --out {target}: No such file or directory\n")
