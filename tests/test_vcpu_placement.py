"""`benchmarks/vcpu_placement.py` finds each run process of the command it wraps, matches it to the
command's round lines in order (harness first in even rounds) and says so when they do not match,
in one line; `--summarize` reprints a committed GPU call."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "vcpu_placement.py"
# about 10 s of real processes with a probe on every CPU: kept out of the unit tier
pytestmark = pytest.mark.slow

# stands in for overhead.py: per round two fresh python processes that each use 1 s of CPU, in
# overhead.py's order, then its round line with medians that name the round and the side
FAKE = """
import subprocess, sys
BUSY = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1.0: pass"
for r in range(2):
    for side in (("harness", "bare") if r % 2 == 0 else ("bare", "harness")):
        subprocess.run([sys.executable, "-c", BUSY], check=True)
    first = "harness" if r % 2 == 0 else "bare"
    print(f"round {r} ({first} first): harness {10 + r}.000 ms/step (p10 1, 0 faults/step)   "
          f"bare loop {20 + r}.000 ms/step (p10 1, 0 faults/step) (2 s)", flush=True)
"""


def _placement(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_runs_are_matched_to_their_rounds_in_order(tmp_path):
    # through `timeout`, as the GPU calls ran it: a process that is not python between the runs and the wrapper
    p = _placement("--out", str(tmp_path), "--", "timeout", "100", sys.executable, "-c", FAKE)
    assert p.returncode == 0, p.stderr
    runs = [line.split()[:3] for line in p.stdout.splitlines() if line[:5].strip().isdigit()]
    assert runs == [["0", "harness", "10.000"], ["1", "bare", "20.000"],
                    ["2", "bare", "21.000"], ["3", "harness", "11.000"]]
    assert (tmp_path / "command.log").read_text().count("round ") == 2
    assert _placement("--summarize", str(tmp_path)).stdout.splitlines() == p.stdout.splitlines()[2:]


def test_runs_that_do_not_match_the_round_lines_are_one_error_line(tmp_path):
    lonely = "print('round 0 (harness first): harness 1.000 ms/step (x)   bare loop 2.000 ms/step (x)')"
    p = _placement("--out", str(tmp_path), "--", sys.executable, "-c", lonely)
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: 0 run processes sampled against 2 runs in {tmp_path / 'command.log'}"


def test_a_folder_without_a_call_is_one_error_line(tmp_path):
    p = _placement("--summarize", str(tmp_path / "none"))
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: {tmp_path / 'none'}: No such file or directory"


def test_summarize_reprints_the_committed_h100_call():
    call = REPO / "docs" / "results" / "2026-12-06-h100-vcpu-placement" / "fp16"
    p = _placement("--summarize", str(call))
    assert p.returncode == 0, p.stderr
    # the summary that call's README quotes: 26 runs matched to 13 rounds, the cut round left out
    assert p.stdout == (call / "summary.txt").read_text()
    assert "harness: 13 runs on vCPUs [1, 2, 3, 4, 6, 9, 11], probe x median 0.99" in p.stdout
