"""Harness overhead: per-step latency through the harness (fresh worker, protocol, timed window)
versus a bare in-process loop over the same backend code, same env, same weights and inputs.

    uv run python benchmarks/overhead.py [--matrix examples/quick.toml] [--cell ID] [--rounds 3]
        [--worker-start spawn|forkserver] [--bare-start spawn|spawn-preload|fork|fork-session|forkserver]
        [--cpus 2-5]

On a GPU host, with the preinstalled torch:

    uv run python benchmarks/overhead.py --matrix examples/sd15-cuda.toml --cell diffusers-cuda-fp16 \
        --env diffusers=$(which python3) --rounds 4

Rounds alternate which goes first, so slow drifts of the host hit both alike. `--bare-start fork`
forks each bare loop from a process that made the fork server's imports and nothing else: with
`--worker-start forkserver` both sides then start forked, and what differs is only the harness
(its worker's new session, lifeline and protocol); `--bare-start fork-session` also gives each
bare loop a new session, which leaves the lifeline and the protocol; `--bare-start
forkserver` forks the bare loop from the harness's own fork server, so that both sides are children
of one parent and share whatever state it hands its children; `--bare-start spawn-preload` spawns
the bare loop but has it make the fork server's imports first, in their order, so that only the
fork itself differs from `fork`; `--bare-lifeline` sets up the worker's
lifeline in the bare loop too. `--cpus` pins this
process, and so both sides (the harness's worker and fork server, the bare loop), to the same
CPUs: where fresh processes land on the host's cores changes a launch-bound GPU cell's speed, a
nuisance both sides then share (docs/methodology.md, "Harness overhead"). Prints each
round with both sides' minor page faults per timed step (the allocator state each measured: a
CPU step whose memory is faulted in afresh each time is up to a fifth slower; docs/methodology.md,
"Harness overhead") and two ratios (harness / bare): of the runs' median step
and of their p10 step (less moved than the median by the host CPU's slow phases, unless a
phase covers a whole window: docs/methodology.md and `benchmarks/host_drift.py`); 1.00 means the harness adds nothing
measurable. Both sides run the worker's window rule: at least the matrix's iterations and
`min_window_s`. Both inherit this process's environment, so on Linux
`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864` before
the command holds glibc's allocator in one state on both sides.

Fresh processes of either side spread by more than 2% (docs/methodology.md, "Harness overhead"),
so one command's ratio is an estimate: it also prints the Hodges-Lehmann ratio of the runs' medians
(the median of all harness/bare quotients) with its 95% interval, then the paired one (the rounds
are pairs: the signed-rank Hodges-Lehmann ratio of the per-round quotients, which a drift of the
host between rounds does not widen) and how many rounds the harness was the slower in, and says of
each interval whether the rounds place the ratio within 0.98-1.02, outside, or not yet either way.
`--out FILE` appends each round to a JSON-lines file as it finishes (a command cut short keeps its
rounds), with the options and the harness's commit (`tree`: `git_commit`, `git_dirty`, as
`session.json` records them; the lifeline, for one, changed between trees); `--summarize FILE...`
pools the rounds of such files and prints the same summary:

    uv run python benchmarks/overhead.py --rounds 40 --out rounds.jsonl
    uv run python benchmarks/overhead.py --summarize command1.jsonl command2.jsonl

All rounds of one command fork their two sides from the same two parents (the fork server, the
bare loop's parent), and on a launch-bound GPU step the state a parent hands its children moved
the ratio by several percent from one command to the next (docs/methodology.md, "Harness
overhead"): pooled rounds of several commands (a command's rounds are numbered from 0) also get a
line that reads each command's median quotient as one value, the unit to count there, and one that
says whether the commands differ more than their rounds (a permutation test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrator.config.envs import discover, ensure_synced, parse_overrides  # noqa: E402
from orchestrator.config.matrix import load_matrix  # noqa: E402
from orchestrator.errors import UserError  # noqa: E402
from orchestrator.results import provenance  # noqa: E402
from orchestrator.results.compare import ALPHA, rank_test, signed_rank_test  # noqa: E402
from orchestrator.run import scratch  # noqa: E402
from orchestrator.run.forkserver import ForkServer, ForkServerError  # noqa: E402
from orchestrator.run.pins import pin_inputs, pin_model, setup_message  # noqa: E402
from orchestrator.run.worker_client import run_worker  # noqa: E402
from workers.contract.backends import BACKENDS  # noqa: E402

BARE = """
import json, resource, sys, time
import numpy as np
from workers.backends import backend_module
from workers.backends.base import LoadSpec
from workers.contract.inputs import pinned_inputs
from workers.contract.presets import UNetArch
a = json.loads(sys.argv[1])
if a.get("lifeline"):
    from workers.contract.lifeline import exit_with_parent
    exit_with_parent()
inp = pinned_inputs(a["resolution"], batch=a["batch"], seed=a["seed"], timestep=a["timestep"])
model = backend_module(a["cell"]["backend"]).load(
    LoadSpec(cell=a["cell"], arch=UNetArch.from_dict(a["arch"]), model_path=a["path"], inputs=inp))
for _ in range(a["warmup"]):
    model.step()
def sched():
    with open("/proc/thread-self/schedstat") as f:
        on_cpu, queued, _ = f.read().split()
    with open("/proc/thread-self/stat") as f:
        cpu = f.read().rsplit(")", 1)[1].split()[36]
    return int(on_cpu), int(queued), int(cpu)
lat, steps = [], []
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
first = t1 = time.monotonic_ns()
while len(lat) < a["iterations"] or t1 - first < a["min_window_s"] * 1e9:
    s0 = sched() if a.get("steps_out") else None
    t = time.monotonic_ns()
    model.step()
    t1 = time.monotonic_ns()
    lat.append((t1 - t) / 1e6)
    if s0:
        s1 = sched()
        steps.append((t, t1, s1[0] - s0[0], s1[1] - s0[1], s1[2]))
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
if a.get("steps_out"):
    json.dump(steps, open(a["steps_out"], "w"))
print(json.dumps({"median_ms": float(np.median(lat)), "p10_ms": float(np.percentile(lat, 10)),
                  "minor_faults_per_step": faults / len(lat)}))
"""

# With --bare-start spawn-preload: put before BARE, the spawned bare loop first makes the fork
# server's imports (the modules after its arguments) in their order and under their import-time
# environment, as a forked one's parent does, then takes its own environment back: a fresh process
# whose heap was built as a forked one's was, to tell the fork from the order of the imports.
PRELOAD_FIRST = """
import os, sys
from workers.forkserver import preload
environ = dict(os.environ)
preload(sys.argv[2:])
os.environ.clear()
os.environ.update(environ)
"""

# With --bare-start fork or fork-session: a process that makes the fork server's imports
# (workers/forkserver.py's `preload`, under its import-time environment) and nothing else, then forks
# the bare loop for each line of arguments on stdin, in the environment it started with and, with
# fork-session, in a new session as the harness's worker is. A line is "TIMEOUT_S ARGUMENTS": a child
# still running after TIMEOUT_S gets SIGALRM, whose default ends it. "exit CODE" after each child.
BARE_FORKS = """
import math, os, signal, sys, traceback
from workers.forkserver import preload
environ = dict(os.environ)
new_session = sys.argv[2] == "fork-session"
preload(sys.argv[3:])
loop = compile(sys.argv[1], "<bare loop>", "exec")
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        if new_session:
            os.setsid()
        os.environ.clear()
        os.environ.update(environ)
        timeout_s, _, args = line.partition(" ")
        signal.alarm(math.ceil(float(timeout_s)))
        sys.argv = ["-c", args]
        code = 0
        try:
            exec(loop, {"__name__": "__main__"})
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class BareForksError(Exception):
    """The bare loop's fork parent could not start; the message is one line."""


class BareForks:
    """The bare loop forked from a process that made the fork server's imports: a forked start
    without the harness (no lifeline, no protocol, and a new session only with
    fork-session), to tell what forking costs from what the harness's worker adds."""

    def __init__(self, env, start: str, modules: list[str], log: Path):
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([str(env.python), "-c", BARE_FORKS, BARE, start, *modules], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, cwd=REPO, env=env.worker_environ(),
                                         text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        if self.stdout.readline() != "ready\n":
            self.close()
            raise BareForksError(f"the bare loop's fork parent exited before it was ready (its log: {_tail(self.log)})")

    def run(self, bare_args: str, timeout_s: float) -> dict | None:
        """One forked bare loop's output line, or None (the reason printed)."""
        try:
            self.stdin.write(f"{timeout_s} {bare_args}\n")
            self.stdin.flush()
        except OSError:
            pass  # the parent is gone: the loop below finds no "exit" line
        lines = []
        while (line := self.stdout.readline()) and not line.startswith("exit "):
            lines.append(line)
        return _bare_output(int(line.split()[1]) if line else None, lines, timeout_s, self.log)

    def close(self) -> None:
        self.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()


# With --bare-start forkserver: the harness's fork server, `python -m workers --forkserver` itself
# (workers/cli.py's main, given the server's arguments), with its children's `serve` wrapped: a
# child whose fork request's argv is ["bare", TIMEOUT_S, ARGUMENTS] runs the bare loop instead of the
# worker, so both sides are children of one parent. A bare child still running after TIMEOUT_S gets
# SIGALRM, whose default ends it.
SHARED_SERVER = """
import math, signal, sys
import workers.serve
from workers.cli import main
loop = compile(sys.argv[1], "<bare loop>", "exec")
worker = workers.serve.serve
def serve_or_bare(env_name):
    if sys.argv[0] != "bare":
        return worker(env_name)
    signal.alarm(math.ceil(float(sys.argv[1])))
    sys.argv = ["-c", sys.argv[2]]
    exec(loop, {"__name__": "__main__"})
    sys.stdout.flush()
    return 0
workers.serve.serve = serve_or_bare
raise SystemExit(main(sys.argv[2:]))
"""


class SharedServer(ForkServer):
    """The harness's fork server, whose children can also be the bare loop (SHARED_SERVER): what
    a parent hands its children (its address layout, heap, the state of its imports) is then the
    same on both sides, and only what the harness's worker does differs."""

    def command(self) -> list[str]:
        server = super().command()
        return [server[0], "-c", SHARED_SERVER, BARE, *server[server.index("--forkserver"):]]


BARE_GRACE_S = 30.0  # past a forked bare loop's timeout, for it to exit and its output to close


class BareFromServer:
    """The bare loop forked by the harness's own fork server (a SharedServer), in a new session as
    the worker is."""

    def __init__(self, server: SharedServer, env, log: Path):
        self.server, self.env, self.log = server, env, log

    def run(self, bare_args: str, timeout_s: float) -> dict | None:
        """One bare loop's output line, or None (the reason printed). Its SIGALRM ends it at
        `timeout_s`; a process it started that still holds its stdout (or a loop that caught the
        alarm) is ended with its process group at the grace period after that."""
        with open(self.log, "ab") as log:
            child = self.server.fork(["bare", str(timeout_s), bare_args], self.env.worker_environ(), log, timeout_s)
        child.stdin.close()
        out, deadline = b"", time.monotonic() + timeout_s + BARE_GRACE_S
        try:
            while (left := deadline - time.monotonic()) > 0 and select.select([child.stdout], [], [], left)[0]:
                if not (chunk := os.read(child.stdout.fileno(), 1 << 16)):
                    break
                out += chunk
            else:
                print(f"forked bare loop timed out after {timeout_s:g} s", file=sys.stderr)
                return None
            code = child.wait(BARE_GRACE_S)
        except subprocess.TimeoutExpired:
            print(f"forked bare loop timed out after {timeout_s:g} s", file=sys.stderr)
            return None
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.stdout.close()
        lines = out.decode(errors="replace").splitlines()
        return _bare_output(None if child.server_died else code, lines, timeout_s, self.log)

    def close(self) -> None:
        """The server is closed with the harness's (FORKSERVER)."""


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").splitlines()[-5:])


def _bare_output(code: int | None, lines: list[str], timeout_s: float, log: Path) -> dict | None:
    """A forked bare loop's result from its exit code and output lines, or None (the reason and the
    end of its log printed)."""
    if code == -signal.SIGALRM:
        print(f"forked bare loop timed out after {timeout_s:g} s", file=sys.stderr)
        return None
    if code != 0 or not lines:
        print(f"forked bare loop failed ({'its parent exited' if code is None else f'exit {code}'}): {_tail(log)}",
              file=sys.stderr)
        return None
    if (out := _last_object(lines)) is None:
        print(f"forked bare loop failed (its last line is not a JSON object: {lines[-1].strip()[:200]!r}): {_tail(log)}",
              file=sys.stderr)
    return out


def _last_object(lines: list[str]) -> dict | None:
    """The last output line as a JSON object, or None."""
    try:
        out = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


def _side(out: dict | None, label: str) -> tuple[float, float, float] | None:
    """A bare loop's (median, p10, faults per step) from its result, or None (the reason printed)."""
    try:
        if out is not None:
            return float(out["median_ms"]), float(out["p10_ms"]), float(out["minor_faults_per_step"])
    except (TypeError, KeyError, ValueError):
        pass
    print(f"{label} printed no result: its last line is not an object of {', '.join(ROUND_KEYS)}", file=sys.stderr)
    return None


FORKSERVER: list[ForkServer] = []  # with --worker-start forkserver: the harness's workers are forked from it


def _harness(env, setup, bare_args, log, timeout_s) -> tuple[float, float, float] | None:
    o = run_worker(env, setup, label="overhead", log_path=log, timeout_s=timeout_s,
                   forkserver=FORKSERVER[0] if FORKSERVER else None)
    if o.status != "ok" or o.result is None:
        print(f"harness run failed: {o.reason}", file=sys.stderr)
        return None
    lat_ms = (np.asarray(o.result.iteration_end_ns) - np.asarray(o.result.iteration_start_ns)) / 1e6
    faults = o.result.minor_faults_per_step()
    return float(np.median(lat_ms)), float(np.percentile(lat_ms, 10)), np.nan if faults is None else faults


BARE_FORK_PARENT: list[BareForks | BareFromServer] = []  # with --bare-start fork, fork-session or forkserver: the bare loops' parent
BARE_PRELOAD: list[str] = []  # with --bare-start spawn-preload: the modules the spawned bare loop imports first


def _bare(env, setup, bare_args, log, timeout_s) -> tuple[float, float, float] | None:
    if BARE_FORK_PARENT:
        out = BARE_FORK_PARENT[0].run(bare_args, timeout_s)
        return None if out is None else _side(out, "forked bare loop")
    try:
        code = PRELOAD_FIRST + BARE if BARE_PRELOAD else BARE
        b = subprocess.run([str(env.python), "-c", code, bare_args, *BARE_PRELOAD], capture_output=True, text=True,
                           cwd=REPO, env=env.worker_environ(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"bare loop timed out after {timeout_s:g} s", file=sys.stderr)
        return None
    if b.returncode != 0:
        print(b.stderr, file=sys.stderr)
        return None
    return _side(_last_object(b.stdout.strip().splitlines()), "bare loop")


def prepare(matrix: Path, cell_id: str, overrides: list[str]):
    """The matrix, its cell, the cell's env (synced), the worker's setup and the bare loop's arguments
    (the same weights and inputs, pinned as a session pins them)."""
    envs = discover(parse_overrides(overrides))
    m = load_matrix(matrix, set(envs))
    cell = m.cell(cell_id)
    env = envs[cell.env]
    ensure_synced([env])
    model = pin_model(m.model, m.path)
    inputs = pin_inputs(m.inputs, [cell.resolution], m.path)[cell.resolution]
    setup = setup_message(m, cell, model, inputs)
    bare = {"cell": cell.as_setup(), "arch": setup.model.arch, "path": str(model.path),
            "resolution": cell.resolution, "batch": m.inputs.batch, "seed": m.inputs.seed,
            "timestep": m.inputs.timestep, "warmup": m.timing.warmup, "iterations": m.timing.iterations,
            "min_window_s": setup.min_window_s}
    return m, cell, env, setup, bare


ROUND_KEYS = ("median_ms", "p10_ms", "minor_faults_per_step")
GOAL = (0.98, 1.02)


def _side_json(side: tuple[float, float, float]) -> dict[str, float | None]:
    return {k: None if np.isnan(v) else v for k, v in zip(ROUND_KEYS, side)}


Rounds = tuple[list[tuple[float, float, float]], list[tuple[float, float, float]], list[int], list[int]]


def read_rounds(paths: list[str]) -> Rounds:
    """Both sides' rounds from `--out` files, in order, the command each came from (a command's
    rounds are numbered from 0) and the file that command began in (a call's rounds, usually);
    a file that is not one raises ValueError naming the file and line."""
    harness: list[tuple[float, float, float]] = []
    bare: list[tuple[float, float, float]] = []
    commands: list[int] = []
    files: list[int] = []
    for i, path in enumerate(paths):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise ValueError(f"{path}: {e.strerror}") from None
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                sides = [tuple(np.nan if row[side][k] is None else float(row[side][k]) for k in ROUND_KEYS)
                         for side in ("harness", "bare")]
                first = int(row["round"]) == 0
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{path}:{n}: not a round written by --out ({type(e).__name__}: {e})") from None
            harness.append(sides[0])
            bare.append(sides[1])
            commands.append(commands[-1] + first if commands else 0)
            files.append(i if first or not files else files[-1])
    if not harness:
        raise ValueError(f"no rounds in {', '.join(paths)}")
    return harness, bare, commands, files


def _placed(lo: float, hi: float, level: float, units: str = "rounds") -> str:
    """What an interval of the harness / bare ratio says about the 0.98-1.02 goal."""
    if level < 1 - ALPHA:
        return f"too few {units} for a {1 - ALPHA:.0%} interval"
    if GOAL[0] <= lo and hi <= GOAL[1]:
        return f"within {GOAL[0]}-{GOAL[1]}"
    if hi < GOAL[0] or lo > GOAL[1]:
        return f"outside {GOAL[0]}-{GOAL[1]}"
    return f"not placed within or outside {GOAL[0]}-{GOAL[1]} by these {units}"


def _paired(log_quotients: list[float], units: str) -> str:
    """The signed-rank Hodges-Lehmann ratio of harness / bare log quotients, its interval and placement."""
    s = signed_rank_test(log_quotients)
    ratio, (lo, hi) = float(np.exp(s.hl_shift)), (float(np.exp(s.hl_ci[0])), float(np.exp(s.hl_ci[1])))
    return (f"Hodges-Lehmann ratio {ratio:.3f} [{lo:.3f}-{hi:.3f}] at {s.hl_ci_level:.1%} (signed-rank p {s.p:.2g}): "
            f"{_placed(lo, hi, s.hl_ci_level, units)}")


def summarize(harness: list[tuple[float, float, float]], bare: list[tuple[float, float, float]],
              commands: list[int], files: list[int]) -> None:
    """The ratio of the medians over rounds (of the runs' median and p10 step); the Hodges-Lehmann
    ratio of the runs' medians as two independent samples; then, as the rounds are pairs (run
    back to back, in alternating order), the paired one: per round harness / bare, the rounds
    where the harness was the slower, and the signed-rank Hodges-Lehmann ratio with its interval.
    Rounds of one command fork from the same two parents (the fork server, the bare loop's parent),
    whose state their children share, so where the rounds come from several commands it also reads
    each command's median quotient as one value, and tests whether the commands differ more than
    their rounds (docs/methodology.md, "Harness overhead")."""
    for i, name in enumerate(("median", "p10")):
        h, b = float(np.median([x[i] for x in harness])), float(np.median([x[i] for x in bare]))
        print(f"runs' {name} per step, median over {len(harness)} rounds: harness {h:.3f} ms, bare {b:.3f} ms, "
              f"ratio {h / b:.3f}")
    if len(harness) < 2:
        return
    t = rank_test(np.log([x[0] for x in harness]), np.log([x[0] for x in bare]))
    ratio, (lo, hi) = float(np.exp(t.hl_shift)), (float(np.exp(t.hl_ci[0])), float(np.exp(t.hl_ci[1])))
    print(f"Hodges-Lehmann ratio of the runs' medians: {ratio:.3f} [{lo:.3f}-{hi:.3f}] at {t.hl_ci_level:.1%} "
          f"(Mann-Whitney p {t.p:.2g}): {_placed(lo, hi, t.hl_ci_level)}")
    pairs = [(float(np.log(h[0] / b[0])), c, f) for h, b, c, f in zip(harness, bare, commands, files)
             if np.isfinite(h[0] / b[0])]
    if len(pairs) < 2:
        return
    per_round = np.array([q for q, _, _ in pairs])
    print(f"paired, per round: harness / bare {float(np.exp(np.median(per_round))):.3f} at the median, harness "
          f"slower in {int(np.sum(per_round > 0))} of {per_round.size}; {_paired(list(per_round), 'rounds')}")
    per_command = [float(np.median([q for q, c, _ in pairs if c == k])) for k in sorted({c for _, c, _ in pairs})]
    if len(per_command) < 2:
        return
    print(f"by command, each command's median quotient one value: {len(per_command)} commands, from "
          f"{float(np.exp(min(per_command))):.3f} to {float(np.exp(max(per_command))):.3f}; "
          f"{_paired(per_command, 'commands')}")
    print(_command_effect(pairs))


SHUFFLES = 2000


def command_spread(values: np.ndarray, commands: list[int], files: list[int]) -> tuple[float, int, float]:
    """The variance of the commands' medians of `values` (per round, in order), how many of SHUFFLES
    shufflings of each file's rounds among that file's commands spread them as widely or more,
    and the permutation p. Shuffling within each file keeps a call noisier than another from
    passing for a command effect; the seed makes a summary reprint alike."""

    def sections(labels: list[int]) -> list[np.ndarray]:
        return np.split(np.arange(values.size), np.cumsum(np.unique(labels, return_counts=True)[1])[:-1])

    by_command, by_file = sections(commands), sections(files)

    def spread(x: np.ndarray) -> float:
        return float(np.var([np.median(x[i]) for i in by_command]))

    observed, rng = spread(values), np.random.default_rng(0)
    as_wide = sum(spread(np.concatenate([rng.permutation(values[i]) for i in by_file])) >= observed * (1 - 1e-9)
                  for _ in range(SHUFFLES))
    return observed, as_wide, (as_wide + 1) / (SHUFFLES + 1)


def _command_effect(pairs: list[tuple[float, int, int]]) -> str:
    """Whether the commands' median log quotients spread more than their rounds shuffled among
    them do: where they do, a command's rounds share something and the command is the unit to
    count; where the test shows nothing, few commands may be why, and the rounds are not shown
    independent."""
    _, as_wide, p = command_spread(np.array([q for q, _, _ in pairs]), [c for _, c, _ in pairs],
                                   [f for _, _, f in pairs])
    n = len({c for _, c, _ in pairs})
    verdict = ("the commands differ more than their rounds: count commands, not rounds" if p < ALPHA
               else f"no command effect shown by {n} commands, which does not show the rounds "
                    "independent: the by-command line is the cautious count")
    return (f"command effect: each file's rounds shuffled among its commands {SHUFFLES} times spread the commands' "
            f"median quotients as widely or more in {as_wide} (permutation p {p:.2g}): {verdict}")


def _cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--matrix", default=str(REPO / "examples" / "quick.toml"))
    p.add_argument("--cell", default="diffusers-cpu-fp32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON", help="use an existing interpreter for env NAME")
    p.add_argument("--worker-start", choices=("spawn", "forkserver"), default="spawn",
                   help="how the harness's worker starts (sessions on Linux fork it from the env's fork server)")
    p.add_argument("--bare-start", choices=("spawn", "spawn-preload", "fork", "fork-session", "forkserver"),
                   default="spawn",
                   help="how the bare loop's process starts: spawned, as a user's own loop is (spawn-preload: making "
                        "the fork server's imports first, in its order), or forked after the "
                        "fork server's imports (a forked start without the harness), in this process's session or "
                        "in a new one as the harness's worker is, or forked by the harness's own fork server "
                        "(with --worker-start forkserver: both sides children of one parent)")
    p.add_argument("--bare-lifeline", action="store_true",
                   help="the bare loop sets up the worker's lifeline before it loads, as the worker does (on Linux a "
                        "parent-death signal, elsewhere a polling thread), to tell its cost from the rest of the harness")
    p.add_argument("--cpus", type=_cpu_list, default=None, metavar="LIST",
                   help="pin both sides to these CPUs (as taskset -c: 2-5 or 0,2,4)")
    p.add_argument("--out", metavar="FILE", default=None, help="append each round to this JSON-lines file")
    p.add_argument("--summarize", metavar="FILE", nargs="+", default=None,
                   help="pool the rounds of these --out files and print the summary; runs nothing")
    args = p.parse_args()
    if args.summarize:
        try:
            summarize(*read_rounds(args.summarize))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.bare_start == "forkserver" and args.worker_start != "forkserver":
        print("error: --bare-start forkserver forks the bare loop from the harness's fork server: it needs "
              "--worker-start forkserver", file=sys.stderr)
        return 2
    if args.out:
        try:
            open(args.out, "a").close()
        except OSError as e:
            print(f"error: --out {args.out}: {e.strerror}", file=sys.stderr)
            return 2
    if args.cpus is not None:
        os.sched_setaffinity(0, args.cpus)
        print(f"pinned to CPUs {sorted(os.sched_getaffinity(0))}", flush=True)
    try:
        m, cell, env, setup, bare_spec = prepare(Path(args.matrix), args.cell, args.env)
    except UserError as e:
        print(e.printed(), file=sys.stderr)
        return e.exit_code
    bare_args = json.dumps({**bare_spec, "lifeline": args.bare_lifeline})
    with scratch.temporary("overhead") as folder:  # the worker's log, removed after
        try:
            sides = measure_rounds(args, m, cell, env, setup, bare_args, folder / "worker.log")
        except (ForkServerError, BareForksError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            for server in [*FORKSERVER, *BARE_FORK_PARENT]:
                server.close()
    if sides is None:
        return 1
    summarize(*sides, [0] * len(sides[0]), [0] * len(sides[0]))
    return 0


def measure_rounds(args, m, cell, env, setup, bare_args, log: Path):
    """`--rounds` rounds, each written to `--out` as it ends: both sides' (median, p10, faults per
    step), or None once a side failed (its reason printed; the rounds before it are in `--out`)."""
    if args.worker_start == "forkserver":
        kind = SharedServer if args.bare_start == "forkserver" else ForkServer
        server = kind(env, list(BACKENDS[cell.backend].preload), log.with_name("forkserver.log"))
        FORKSERVER.append(server)
        print(f"fork server ready, imports took {server.start().import_s:.1f} s", flush=True)
        if isinstance(server, SharedServer):
            BARE_FORK_PARENT.append(BareFromServer(server, env, log.with_name("bare-forks.log")))
    if args.bare_start == "spawn-preload":
        BARE_PRELOAD.extend(BACKENDS[cell.backend].preload)
    if args.bare_start in ("fork", "fork-session"):
        BARE_FORK_PARENT.append(BareForks(env, args.bare_start, list(BACKENDS[cell.backend].preload),
                                          log.with_name("bare-forks.log")))
        print("bare loop's fork parent ready", flush=True)
    harness: list[tuple[float, float, float]] = []
    bare: list[tuple[float, float, float]] = []
    tree = {k: v for k, v in provenance.harness().items() if k in ("git_commit", "git_dirty")}
    print(f"{cell.id}: {m.timing.warmup} warmup + at least {m.timing.iterations} iterations and {setup.min_window_s} s "
          f"per run, {args.rounds} rounds", flush=True)
    for r in range(args.rounds):
        t0 = time.monotonic()
        first, second = (_harness, _bare) if r % 2 == 0 else (_bare, _harness)
        for measure in (first, second):
            ms = measure(env, setup, bare_args, log, m.timing.run_timeout_s)
            if ms is None:
                return None
            (harness if measure is _harness else bare).append(ms)
        print(f"round {r} ({'harness' if r % 2 == 0 else 'bare'} first): harness {harness[-1][0]:.3f} ms/step "
              f"(p10 {harness[-1][1]:.3f}, {harness[-1][2]:.0f} faults/step)   bare loop{f' ({args.bare_start})' if args.bare_start != 'spawn' else ''} "
              f"{bare[-1][0]:.3f} ms/step "
              f"(p10 {bare[-1][1]:.3f}, {bare[-1][2]:.0f} faults/step) ({time.monotonic() - t0:.0f} s)", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({"cell": cell.id, "worker_start": args.worker_start, "bare_start": args.bare_start,
                                    "bare_lifeline": args.bare_lifeline, "tree": tree, "round": r,
                                    "harness": _side_json(harness[-1]), "bare": _side_json(bare[-1])}) + "\n")
    return harness, bare


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its write end)."""
    watch = select.poll()
    watch.register(sys.stdout.fileno(), 0)
    return any(events & select.POLLERR for _, events in watch.poll(0))


if __name__ == "__main__":
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_reader_gone():  # another pipe broke: that is a fault to see
            raise
        # `--summarize ... | head`: the reader left, so stop as a Unix filter does; stdout onto
        # /dev/null, so that the exit's own flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    raise SystemExit(code)
