"""`benchmarks/overhead.py --summarize` reprints a committed call's summary from its rounds and
pools calls, a bad file or `--out` path is one line, not a traceback after minutes of rounds, output
into a closed pipe (`| head`) ends quietly, real rounds land in `--out` and leave no temp files,
`--bare-start fork-session` gives the bare loop a new session, `--bare-start forkserver` makes it a
child of the harness's own fork server, a bare loop that hangs is ended at the run's timeout, and
one that prints no result, or whose fork server dies, is a failed round in one line."""

import importlib.util
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
    # the lines docs/results/2026-12-05-cpu-overhead-150-rounds/README.md quotes from the call itself, and the
    # paired line added after it (the 93 of 150 rounds that README counts from the file)
    assert p.stdout.splitlines() == [
        "runs' median per step, median over 150 rounds: harness 50.444 ms, bare 49.685 ms, ratio 1.015",
        "runs' p10 per step, median over 150 rounds: harness 48.452 ms, bare 47.572 ms, ratio 1.018",
        "Hodges-Lehmann ratio of the runs' medians: 1.019 [1.001-1.039] at 95.0% (Mann-Whitney p 0.041): "
        "not placed within or outside 0.98-1.02 by these rounds",
        "paired, per round: harness / bare 1.015 at the median, harness slower in 93 of 150; Hodges-Lehmann ratio "
        "1.023 [1.010-1.039] at 95.0% (signed-rank p 0.00055): not placed within or outside 0.98-1.02 by these rounds",
    ]


def test_summarize_reprints_the_committed_20_h100_commands():
    """The pooled summary that docs/results/2026-12-07-h100-overhead-20-commands/README.md and
    docs/methodology.md quote, the permutation line's shuffles included, from the three calls' rounds."""
    folder = REPO / "docs" / "results" / "2026-12-07-h100-overhead-20-commands"
    p = _overhead("--summarize", *(str(folder / f"call{k}-F.jsonl") for k in (1, 2, 3)))
    assert p.returncode == 0, p.stderr
    assert p.stdout == (folder / "summary.txt").read_text()


SHARED_PARENT = REPO / "docs" / "results" / "2026-12-07-h200-overhead-shared-parent"
DISPATCH_HEAVY = REPO / "docs" / "results" / "2026-12-07-cpu-overhead-dispatch-heavy"
THREAD_FREE_CPU = REPO / "docs" / "results" / "2026-12-07-cpu-overhead-thread-free-lifeline"
THREAD_FREE_GPU = REPO / "docs" / "results" / "2026-12-08-h100-overhead-thread-free-lifeline"
FORK_OR_IMPORTS = REPO / "docs" / "results" / "2026-12-08-cpu-overhead-fork-or-import-order"


@pytest.mark.parametrize("summary, rounds", [
    (SHARED_PARENT / "summary-call1.txt", {"H": [SHARED_PARENT / "call1-H.jsonl"], "L": [SHARED_PARENT / "call1-L.jsonl"]}),
    (SHARED_PARENT / "summary-call2.txt", {"H": [SHARED_PARENT / "call2-H.jsonl"]}),
    (DISPATCH_HEAVY / "call1" / "summary.txt", {v: [DISPATCH_HEAVY / "call1" / f"{v}.jsonl"] for v in "FH"}),
    (DISPATCH_HEAVY / "call2" / "summary.txt", {v: [DISPATCH_HEAVY / "call2" / f"{v}.jsonl"] for v in "FL"}),
    (THREAD_FREE_CPU / "call1" / "summary.txt", {v: [THREAD_FREE_CPU / "call1" / f"{v}.jsonl"] for v in "AB"}),
    (THREAD_FREE_CPU / "call2" / "summary.txt", {v: [THREAD_FREE_CPU / "call2" / f"{v}.jsonl"] for v in "AB"}),
    (THREAD_FREE_CPU / "summary.txt", {v: [THREAD_FREE_CPU / f"call{k}" / f"{v}.jsonl" for k in (1, 2)] for v in "AB"}),
    (THREAD_FREE_CPU / "call3" / "summary.txt", {v: [THREAD_FREE_CPU / "call3" / f"{v}.jsonl"] for v in "FS"}),
    (THREAD_FREE_GPU / "summary-call1.txt", {"F": [THREAD_FREE_GPU / "call1-F.jsonl"]}),
    (THREAD_FREE_GPU / "summary-call2.txt", {"F": [THREAD_FREE_GPU / "call2-F.jsonl"]}),
    (THREAD_FREE_GPU / "summary.txt", {"F": [THREAD_FREE_GPU / f"call{k}-F.jsonl" for k in (1, 2)]}),
    (FORK_OR_IMPORTS / "call1" / "summary.txt", {v: [FORK_OR_IMPORTS / "call1" / f"{v}.jsonl"] for v in "FSQ"}),
    (FORK_OR_IMPORTS / "call2" / "summary.txt", {"P": [FORK_OR_IMPORTS / "call2" / "P.jsonl"]}),
], ids=["h200-shared-parent-call1", "h200-shared-parent-call2", "cpu-dispatch-heavy-call1", "cpu-dispatch-heavy-call2",
        "cpu-thread-free-call1", "cpu-thread-free-call2", "cpu-thread-free-both", "cpu-thread-free-call3",
        "h100-thread-free-call1",
        "h100-thread-free-call2", "h100-thread-free-both", "cpu-fork-or-imports-call1",
        "cpu-fork-or-imports-call2"])
def test_summarize_reprints_the_committed_calls_by_variant(summary, rounds):
    """What each of these calls printed at its end (`== V` and the summary of variant V's rounds,
    or of both calls' rounds where the folder pools them), which the folders' READMEs and
    docs/methodology.md quote."""
    printed = ""
    for v, paths in rounds.items():
        p = _overhead("--summarize", *map(str, paths))
        assert p.returncode == 0, p.stderr
        printed += f"== {v}\n{p.stdout}"
    assert printed == summary.read_text()


def _call_files(k: int, v: str) -> str:
    return str(THREAD_FREE_CPU / f"call{k}" / f"{v}.jsonl")


@pytest.mark.parametrize("args, lines", [
    ([], [
        "call1: F / H by command, 28 pairs: F the higher in 19; Hodges-Lehmann 1.0115 [0.9993-1.0229] at 95.2%, "
        "signed-rank p 0.06 (exact)",
        "call2: F / L by command, 16 pairs: F the higher in 9; Hodges-Lehmann 1.0196 [0.9963-1.0411] at 95.6%, "
        "signed-rank p 0.1 (exact)",
    ]),
    ([f"call1:{_call_files(1, 'A')}:{_call_files(1, 'B')}", f"call2:{_call_files(2, 'A')}:{_call_files(2, 'B')}",
      f"both:{_call_files(1, 'A')},{_call_files(2, 'A')}:{_call_files(1, 'B')},{_call_files(2, 'B')}",
      f"fs:{_call_files(3, 'F')}:{_call_files(3, 'S')}"], [
        "call1: A / B by command, 18 pairs: A the higher in 9; Hodges-Lehmann 1.0058 [0.9895-1.0220] at 95.2%, "
        "signed-rank p 0.44 (exact)",
        "call2: A / B by command, 18 pairs: A the higher in 14; Hodges-Lehmann 1.0169 [1.0007-1.0298] at 95.2%, "
        "signed-rank p 0.034 (exact)",
        "both: A / B by command, 36 pairs: A the higher in 23; Hodges-Lehmann 1.0111 [1.0006-1.0214] at 95.0%, "
        "signed-rank p 0.039 (exact)",
        "fs: F / S by command, 12 pairs: F the higher in 2; Hodges-Lehmann 0.9811 [0.9360-0.9942] at 95.8%, "
        "signed-rank p 0.0068 (exact)",
    ]),
    ([f"{a}{b}:{FORK_OR_IMPORTS / 'call1' / f'{a}.jsonl'}:{FORK_OR_IMPORTS / 'call1' / f'{b}.jsonl'}"
      for a, b in ("FS", "QS", "FQ")], [
        "FS: F / S by command, 23 pairs: F the higher in 8; Hodges-Lehmann 0.9878 [0.9750-0.9987] at 95.2%, "
        "signed-rank p 0.023 (exact)",
        "QS: Q / S by command, 23 pairs: Q the higher in 13; Hodges-Lehmann 1.0012 [0.9836-1.0210] at 95.2%, "
        "signed-rank p 0.82 (exact)",
        "FQ: F / Q by command, 23 pairs: F the higher in 6; Hodges-Lehmann 0.9854 [0.9732-1.0006] at 95.2%, "
        "signed-rank p 0.065 (exact)",
    ]),
], ids=["dispatch-heavy", "thread-free", "fork-or-imports"])
def test_pairs_reprints_the_variant_differences_the_readmes_quote(args, lines):
    """The signed-rank tests of one variant's commands against the other's, command by command, as
    the dispatch-heavy, thread-free and fork-or-import-order folders' READMEs quote them (`pairs.py`,
    by default and given the other folders' files)."""
    p = subprocess.run([sys.executable, str(DISPATCH_HEAVY / "pairs.py"), *args], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == lines


def test_summarize_pools_calls_as_one(tmp_path):
    lines = ROUNDS.read_text().splitlines(keepends=True)
    first, second = tmp_path / "call1.jsonl", tmp_path / "call2.jsonl"
    first.write_text("".join(lines[:60]))
    second.write_text("".join(lines[60:]))
    assert _overhead("--summarize", str(first), str(second)).stdout == _overhead("--summarize", str(ROUNDS)).stdout


def test_summarize_reads_each_commands_median_quotient_as_one_value(tmp_path):
    """Six commands' three rounds each in one file (each command's rounds numbered from 0): the
    by-command line takes each command's median quotient, whatever its other rounds, and with six
    values the exact signed-rank interval is their range, at 1 - 2/64."""
    logs = [-0.011, -0.006, -0.001, 0.002, 0.007, 0.012]
    p = _overhead("--summarize", str(_commands(tmp_path / "commands.jsonl", logs, (-0.05, 0.0, 0.03))))
    assert p.returncode == 0, p.stderr
    walsh = sorted((a + b) / 2 for a, b in itertools.combinations_with_replacement(logs, 2))
    assert p.stdout.splitlines()[4] == (
        f"by command, each command's median quotient one value: 6 commands, from 0.989 to 1.012; Hodges-Lehmann ratio "
        f"{math.exp(walsh[10]):.3f} [0.989-1.012] at 96.9% (signed-rank p 0.84): within 0.98-1.02")


def _commands(path: Path, logs: list[float], offsets: tuple[float, ...]) -> Path:
    """One round per offset for each command's log quotient, each command's rounds numbered from 0."""
    path.write_text("".join(
        json.dumps({"round": r, "harness": {"median_ms": 50.0 * math.exp(q + d), "p10_ms": 49.0, "minor_faults_per_step": 1.0},
                    "bare": {"median_ms": 50.0, "p10_ms": 49.0, "minor_faults_per_step": 1.0}}) + "\n"
        for q in logs for r, d in enumerate(offsets)))
    return path


def _command_effect(*paths: Path) -> tuple[int, float, str]:
    """The permutation line's count of shuffles as wide, its p and its verdict."""
    p = _overhead("--summarize", *map(str, paths))
    assert p.returncode == 0, p.stderr
    head, _, tail = p.stdout.splitlines()[5].partition(" (permutation p ")
    assert head.startswith("command effect: each file's rounds shuffled among its commands 2000 times spread the "
                           "commands' median quotients as widely or more in ")
    value, _, verdict = tail.partition("): ")
    return int(head.rsplit(" ", 1)[1]), float(value), verdict


DIFFER = "the commands differ more than their rounds: count commands, not rounds"


@pytest.mark.parametrize(("offsets", "differ"), [((-0.001, 0.0, 0.001), True), ((-0.05, 0.0, 0.03), False)])
def test_summarize_says_whether_the_commands_differ_more_than_their_rounds(tmp_path, offsets, differ):
    """The same six commands' quotients, their rounds close around them (the command is what
    varies: a small permutation p, count commands) or spread far wider than the commands are
    apart (rounds shuffled among commands spread the medians as much: nothing shown)."""
    as_wide, p, verdict = _command_effect(
        _commands(tmp_path / "commands.jsonl", [-0.025, -0.015, -0.005, 0.005, 0.015, 0.025], offsets))
    assert p == pytest.approx((as_wide + 1) / 2001, abs=0.0051)
    if differ:
        assert as_wide < 100 and verdict == DIFFER
    else:
        assert as_wide >= 100 and verdict == ("no command effect shown by 6 commands, which does not show the rounds "
                                              "independent: the by-command line is the cautious count")


def test_the_permutation_shuffles_rounds_within_each_file_so_a_shift_between_calls_is_no_command_effect(tmp_path):
    """Two calls whose commands are alike within each call (four of 3 rounds, three of 4) but whose
    host shifted the quotient between them: in their two files the shift is not read as a command
    effect; the same rounds in one file are, as nothing then says where one call ends."""
    first = _commands(tmp_path / "call1.jsonl", [0.02] * 4, (-0.002, 0.0, 0.002))
    second = _commands(tmp_path / "call2.jsonl", [-0.02] * 3, (-0.002, 0.0, 0.002, 0.001))
    as_wide, _, verdict = _command_effect(first, second)
    assert as_wide >= 100 and verdict.startswith("no command effect shown by 7 commands")
    both = tmp_path / "both.jsonl"
    both.write_text(first.read_text() + second.read_text())
    as_wide, _, verdict = _command_effect(both)
    assert as_wide < 100 and verdict == DIFFER


def test_summarize_names_a_garbled_line_and_a_missing_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(ROUNDS.read_text().splitlines()[0] + "\n" + '{"harness": {"median_ms": 1}}\n')
    p = _overhead("--summarize", str(bad))
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith(f"error: {bad}:2: not a round written by --out") and p.stderr.count("\n") == 1
    p = _overhead("--summarize", str(tmp_path / "absent.jsonl"))
    assert (p.returncode, p.stderr) == (2, f"error: {tmp_path / 'absent.jsonl'}: No such file or directory\n")


def test_summarize_into_a_pipe_whose_reader_left_stops_without_a_traceback():
    """`--summarize FILE | head -1`: head exits after its line; the script must stop as a filter does."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader gone before the first line, as head is after its last
    with os.fdopen(write_end, "wb") as stdout:
        p = subprocess.run([sys.executable, str(SCRIPT), "--summarize", str(ROUNDS)], stdout=stdout,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    assert (p.returncode, p.stderr) == (1, "")


def test_a_bare_loop_from_the_fork_server_without_one_is_refused_in_one_line():
    p = _overhead("--bare-start", "forkserver", "--rounds", "1")
    assert (p.returncode, p.stdout, p.stderr) == (2, "", "error: --bare-start forkserver forks the bare loop from the "
                                                  "harness's fork server: it needs --worker-start forkserver\n")


@pytest.mark.parametrize("script", ["overhead.py", "host_drift.py"])
def test_a_missing_matrix_or_cell_is_refused_in_one_line_before_anything_runs(script, tmp_path):
    """Both scripts pin the cell as a session does (overhead.py's `prepare`); host_drift.py does it
    for every cell before its probe phases, so a typo costs no minutes and leaves no output folder."""
    run = [sys.executable, str(REPO / "benchmarks" / script)]
    if script == "host_drift.py":  # an env of this interpreter: nothing to sync, were a cell prepared
        run += ["--out", str(tmp_path / "out"), "--env", f"diffusers={sys.executable}"]
    cell = ["--cell", "nope"] if script == "overhead.py" else ["--cells", "diffusers-cpu-fp32,nope"]
    quick = str(REPO / "examples" / "quick.toml")
    for args, line in [(["--matrix", quick, *cell], f"error: {quick}: no cell 'nope' (cells: diffusers-cpu-fp32, "
                                                      "diffusers-cpu-bf16, mlx-cpu-fp32)\n"),
                       (["--matrix", str(tmp_path / "absent.toml")],
                        f"error: {tmp_path / 'absent.toml'}: cannot read matrix file: No such file or directory\n")]:
        p = subprocess.run([*run, *args], capture_output=True, text=True, timeout=120)
        assert (p.returncode, p.stdout, p.stderr) == (2, "", line)
    assert not (tmp_path / "out").exists()


def test_an_unwritable_out_is_refused_before_any_round(tmp_path):
    target = tmp_path / "no-such-folder" / "rounds.jsonl"
    p = _overhead("--rounds", "1", "--out", str(target))
    assert (p.returncode, p.stdout, p.stderr) == (2, "", f"error: --out {target}: No such file or directory\n")


@pytest.mark.parametrize("bare_start", ["spawn", "spawn-preload", "fork", "fork-session", "forkserver"])
def test_rounds_through_a_fork_server_are_written_summarized_and_leave_no_temp_files(diffusers_python, tmp_path, request,
                                                                                     bare_start):
    """Two real rounds of the small 64 px cell, the bare loop spawned or forked (in this session or a
    new one, or by the harness's fork server, there with --bare-lifeline too): each round's line in
    --out, the summary of exactly those rounds, and nothing of ours left in the temp folder (the
    worker's log, the fork server's socket)."""
    tmp, out = Path(tempfile.mkdtemp(prefix="t")), tmp_path / "rounds.jsonl"  # short: the fork server's socket is in it
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    p = subprocess.run([sys.executable, str(SCRIPT), "--matrix", str(REPO / "tests" / "fixtures" / "matrices" / "coreml-tiny.toml"),
                        "--cell", "diffusers-cpu-fp32", "--rounds", "2", "--worker-start", "forkserver", "--bare-start", bare_start,
                        *(["--bare-lifeline"] if bare_start == "forkserver" else []), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp)})
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    lifeline = bare_start == "forkserver"  # that case also passes --bare-lifeline
    assert [(r["round"], r["worker_start"], r["bare_start"], r["bare_lifeline"], r["cell"]) for r in rows] == [
        (k, "forkserver", bare_start, lifeline, "diffusers-cpu-fp32") for k in (0, 1)]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert all(r["tree"]["git_commit"] == head and isinstance(r["tree"]["git_dirty"], bool) for r in rows)
    assert (f"bare loop ({bare_start})" in p.stdout) == (bare_start != "spawn")
    assert all(r[side]["median_ms"] > 0 for r in rows for side in ("harness", "bare"))
    summary = p.stdout.splitlines()[-4:]
    assert summary[0].startswith("runs' median per step, median over 2 rounds: harness ")
    assert summary[2].startswith("Hodges-Lehmann ratio of the runs' medians: ")
    assert summary[3].startswith("paired, per round: harness / bare ")
    assert summary == _overhead("--summarize", str(out)).stdout.splitlines()
    # (importing torch's inductor makes its per-user torchinductor_<user> folder there, reused by every run)
    assert [f.name for f in tmp.iterdir() if f.name.startswith("cdb-")] == []


class _ThisPython:
    """A stand-in for a worker env: this interpreter, with the repository importable."""

    python = Path(sys.executable)
    name = "this"

    @staticmethod
    def worker_environ() -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO)}


def _overhead_module():
    spec = importlib.util.spec_from_file_location("overhead", SCRIPT)
    assert spec is not None and spec.loader is not None
    overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overhead)
    return overhead


@pytest.mark.parametrize("bare_start", ["fork", "fork-session"])
def test_fork_session_forks_the_bare_loop_into_a_new_session_and_fork_does_not(monkeypatch, tmp_path, bare_start):
    overhead = _overhead_module()
    monkeypatch.setattr(overhead, "BARE", "import json, os\nprint(json.dumps({'leader': os.getsid(0) == os.getpid()}))")
    parent = overhead.BareForks(_ThisPython, bare_start, [], tmp_path / "bare-forks.log")
    try:
        assert parent.run("{}", 30.0) == {"leader": bare_start == "fork-session"}
    finally:
        parent.close()


def _shared_server(overhead, request, monkeypatch, log: Path):
    """A SharedServer of this interpreter, started with its socket in a short temp folder."""
    tmp = Path(tempfile.mkdtemp(prefix="t"))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    server = overhead.SharedServer(_ThisPython, [], log)
    request.addfinalizer(server.close)
    server.start()
    return server


def test_the_shared_server_forks_the_bare_loop_as_its_own_child_in_a_new_session(monkeypatch, tmp_path, request):
    """`--bare-start forkserver`: the bare loop is a child of the very server that forks the
    harness's workers, a session leader as they are."""
    overhead = _overhead_module()
    monkeypatch.setattr(overhead, "BARE", "import json, os\nprint(json.dumps({'parent': os.getppid(), "
                                          "'leader': os.getsid(0) == os.getpid()}))")
    server = _shared_server(overhead, request, monkeypatch, tmp_path / "forkserver.log")
    bare = overhead.BareFromServer(server, _ThisPython, tmp_path / "bare-forks.log")
    assert bare.run("{}", 30.0) == {"parent": server.ready.pid, "leader": True}
    assert bare.run("{}", 30.0) == {"parent": server.ready.pid, "leader": True}  # the server forks on


def test_a_bare_loop_whose_child_holds_its_output_is_ended_with_that_child_in_one_line(monkeypatch, capsys, tmp_path,
                                                                                       request):
    """A process the bare loop started keeps its stdout open after the loop has exited: the
    loop's reader gives up at the timeout's grace period and ends the loop's process group."""
    overhead = _overhead_module()
    monkeypatch.setattr(overhead, "BARE", "import subprocess, sys\n"
                                          "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                                          "open(sys.argv[1], 'w').write(str(p.pid))\nprint('{}')")
    monkeypatch.setattr(overhead, "BARE_GRACE_S", 1.0)
    server = _shared_server(overhead, request, monkeypatch, tmp_path / "forkserver.log")
    bare = overhead.BareFromServer(server, _ThisPython, tmp_path / "bare-forks.log")
    assert bare.run(str(tmp_path / "child.pid"), 1.0) is None
    assert capsys.readouterr().err == "forked bare loop timed out after 1 s\n"
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 30  # a hang detector: SIGKILL ends it at once
    while _alive(child):
        assert time.monotonic() < deadline, f"the bare loop's child {child} outlived it"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def test_a_bare_loop_whose_fork_server_died_is_a_failed_round_in_one_line(monkeypatch, capsys, tmp_path, request):
    overhead = _overhead_module()
    monkeypatch.setattr(overhead, "BARE", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                                          "print('{\"median_ms\": 1.0}')")
    server = _shared_server(overhead, request, monkeypatch, tmp_path / "forkserver.log")
    bare = overhead.BareFromServer(server, _ThisPython, tmp_path / "bare-forks.log")
    assert bare.run("{}", 30.0) is None
    err = capsys.readouterr().err
    assert err.startswith("forked bare loop failed (its parent exited): ") and err.count("\n") == 1


def _one_bare_loop(overhead, bare_start: str, timeout_s: float, request, monkeypatch, tmp_path: Path):
    """`overhead._bare` once, its bare loop started as `bare_start` says (the BARE set by the caller)."""
    if bare_start == "forkserver":
        server = _shared_server(overhead, request, monkeypatch, tmp_path / "forkserver.log")
        overhead.BARE_FORK_PARENT.append(overhead.BareFromServer(server, _ThisPython, tmp_path / "bare-forks.log"))
    elif bare_start == "spawn-preload":
        monkeypatch.setattr(overhead, "BARE_PRELOAD", ["json"])
    elif bare_start != "spawn":
        overhead.BARE_FORK_PARENT.append(overhead.BareForks(_ThisPython, bare_start, [], tmp_path / "bare-forks.log"))
    try:
        return overhead._bare(_ThisPython, None, "{}", tmp_path / "worker.log", timeout_s)
    finally:
        for parent in overhead.BARE_FORK_PARENT:
            parent.close()


def test_spawn_preload_makes_the_fork_servers_imports_first_in_order_then_takes_its_environment_back(monkeypatch,
                                                                                                      tmp_path):
    """The spawned bare loop of `--bare-start spawn-preload` has imported the preloaded modules, in
    their order, before its own code runs, and runs in its own environment, not the import-time one."""
    overhead = _overhead_module()
    monkeypatch.setattr(overhead, "BARE", "import json, os, sys\n"
                                          "names = [m for m in sys.modules if m in ('colorsys', 'wave')]\n"
                                          "print(json.dumps({'median_ms': 1.0, 'p10_ms': 1.0, 'minor_faults_per_step': 0,"
                                          " 'names': names, 'check': os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK')}))")
    monkeypatch.setattr(overhead, "_side", lambda out, label: out)
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "0")
    monkeypatch.setattr(overhead, "BARE_PRELOAD", ["wave", "colorsys"])
    out = overhead._bare(_ThisPython, None, "{}", tmp_path / "worker.log", 30.0)
    assert (out["names"], out["check"]) == (["wave", "colorsys"], "0")


@pytest.mark.parametrize("printed", ["print('done')", "print('{\"median_ms\": 1.0}')"])
@pytest.mark.parametrize("bare_start", ["spawn", "spawn-preload", "fork", "fork-session", "forkserver"])
def test_a_bare_loop_that_prints_no_result_is_a_failed_round_in_one_line(monkeypatch, capsys, tmp_path, request,
                                                                          bare_start, printed):
    """Not JSON, or an object without the three numbers: the round fails with one line, not a traceback."""
    overhead = _overhead_module()
    monkeypatch.setattr(overhead, "BARE", printed)
    assert _one_bare_loop(overhead, bare_start, 30.0, request, monkeypatch, tmp_path) is None
    err = capsys.readouterr().err
    forked = "" if bare_start.startswith("spawn") else "forked "
    assert err.count("\n") == 1
    if printed == "print('done')" and forked:
        assert err.startswith("forked bare loop failed (its last line is not a JSON object: 'done'): ")
    else:
        assert err == f"{forked}bare loop printed no result: its last line is not an object of median_ms, p10_ms, minor_faults_per_step\n"


@pytest.mark.parametrize("bare_start", ["spawn", "spawn-preload", "fork", "fork-session", "forkserver"])
def test_a_bare_loop_that_hangs_is_ended_at_the_runs_timeout_in_one_line(monkeypatch, capsys, tmp_path, request,
                                                                         bare_start):
    overhead = _overhead_module()
    monkeypatch.setattr(overhead, "BARE", "import time\ntime.sleep(60)")
    assert _one_bare_loop(overhead, bare_start, 1.0, request, monkeypatch, tmp_path) is None
    label = "bare loop" if bare_start.startswith("spawn") else "forked bare loop"
    assert capsys.readouterr().err == f"{label} timed out after 1 s\n"
