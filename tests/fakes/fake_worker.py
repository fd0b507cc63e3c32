"""A worker that misbehaves on purpose (FAKE_MODE), to drive the runner through real pipes.
It reads its setup with the protocol's own message types, so a well-formed run proves the
orchestrator sends a setup a worker accepts. Each mode is one fault a worker can commit;
MODES lists them, with the stage at which each strikes."""

import functools
import json
import os
import signal
import sys
import time

import numpy as np

from workers.contract.lifeline import exit_with_parent
from workers.contract.messages import Hello, Measure, Ready, Result, Setup, Unsupported, parse, wire
from workers.contract.protocol import HEADER, PROTOCOL_VERSION, Channel, encode

# What each mode changes in the message it names (None: the whole message).
READY_CHANGES = {
    "realized_str": {"realized": "cpu"}, "versions_list": {"versions": [1]},
    "realized_nan": {"realized": {"device": "cpu", "x": float("nan")}}, "realized_bytes": {"realized": {"d": b"\0"}},
    "conversion_str": {"realized": {"conversion": "cached"}}, "load_inf": {"load_s": float("inf")},
    "realized_deep": {"realized": {"d": functools.reduce(lambda a, _: [a], range(40), 1)}},
}
UNSUPPORTED_CHANGES = {"facts_int": {"facts": 3}, "facts_conversion_list": {"facts": {"conversion": [1]}}}
RESULT_CHANGES = {
    "bad_field": lambda r, s: {"iteration_start_ns": [*s[:-1], "x"]},
    "iter_empty": lambda r, s: {"iteration_start_ns": [], "iteration_end_ns": []},
    "iter_mismatch": lambda r, s: {"iteration_end_ns": r["iteration_end_ns"][:-1]},
    "iter_backwards": lambda r, s: {"iteration_end_ns": [t - 10**9 for t in r["iteration_end_ns"]]},
    "iter_huge": lambda r, s: {"iteration_end_ns": [2**64 - 1] * len(s), "window_end_ns": 2**64 - 1},
    "iter_negative": lambda r, s: {"window_start_ns": -5},
    "iter_few": lambda r, s: {"iteration_start_ns": s[:1], "iteration_end_ns": r["iteration_end_ns"][:1]},
    "faults_negative": lambda r, s: {"minor_faults": -5},
    "window_inf": lambda r, s: {"window_end_ns": float("inf")},
    "window_empty": lambda r, s: {"window_start_ns": r["window_end_ns"]},
    "output_shape": lambda r, s: {"output": np.ones((2, 4, 1, 1), np.float32)},
    "output_int": lambda r, s: {"output": np.ones(r["output"].shape, np.int32)},
    "output_list": lambda r, s: {"output": [1.0]},
}

def chosen_mode() -> str:
    """FAKE_MODE, or per run: FAKE_MODES maps run labels' endings to modes (`run-001=iter_empty;...`)."""
    label = sys.argv[sys.argv.index("--run-label") + 1] if "--run-label" in sys.argv else ""
    for item in filter(None, os.environ.get("FAKE_MODES", "").split(";")):
        suffix, _, fault = item.partition("=")
        if label.endswith(suffix):
            return fault
    return os.environ.get("FAKE_MODE", "ok")


def hold() -> bool:
    """Mode `hold`: the first worker to take the file FAKE_HOLD writes its pid there and stops in
    its timed loop, for a test to kill its node; any later one runs as `ok`."""
    try:
        fd = os.open(os.environ["FAKE_HOLD"], os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


RUNS_IN_THIS_PROCESS = 0  # mode "count" reports it: a forked worker must never see an earlier run's


def run() -> int:
    """One run of the protocol, faulty as the mode says: its exit code."""
    global RUNS_IN_THIS_PROCESS
    RUNS_IN_THIS_PROCESS += 1
    exit_with_parent()  # as the real worker does (workers/serve.py)
    mode = chosen_mode()
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    ch = Channel(os.fdopen(os.dup(0), "rb", buffering=0), out)
    hello = wire(Hello(protocol=PROTOCOL_VERSION, pid=os.getpid(), uid=os.getuid(), python="fake"))
    if mode == "truncated_hello":
        out.write(encode(hello)[:-3])
        sys.exit(0)
    if mode == "bogus_length":
        out.write(HEADER.pack(0xFFFFFFFF))
        time.sleep(600)
    if mode == "hello_uid_str":
        hello["uid"] = "root"
    ch.send({**hello, "protocol": 0} if mode == "old_protocol" else hello)
    if mode == "crash":
        print("fake worker: giving up", file=sys.stderr)
        sys.exit(3)
    if mode == "hang":
        time.sleep(600)
    setup = parse(ch.recv(), Setup)
    if mode == "garbage":
        out.write(b"\xc1\xc1\xc1 not msgpack")
        time.sleep(5)
        sys.exit(0)
    if mode == "error":
        ch.send({"type": "error", "message": "RuntimeError: out of memory"})
        sys.exit(1)
    if mode == "markup_error":
        print("could not open [/Users/me/sd/v1-5.safetensors] [bold]", file=sys.stderr)
        ch.send({"type": "error", "message": "OSError: could not open [/Users/me/sd/v1-5.safetensors] [/]"})
        sys.exit(1)
    if mode == "unsupported" or mode in UNSUPPORTED_CHANGES:
        msg = wire(Unsupported(reason="MPS is not available [red]", versions={"fake": "1"}))
        ch.send({**msg, **UNSUPPORTED_CHANGES.get(mode, {})})
        sys.exit(0)
    if mode == "surprise":
        ch.send({"type": "surprise"})
        sys.exit(0)
    counted = {"runs_in_process": RUNS_IN_THIS_PROCESS} if mode == "count" else {}
    ready = wire(Ready(load_s=0.1, warmup_s=0.0, realized={"device": "cpu", **counted}, versions={"fake": "1"},
                       model_sha256=setup.model.sha256))
    ch.send({**ready, **READY_CHANGES.get(mode, {})})
    parse(ch.recv(), Measure)
    if mode == "selfkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hold" and hold():
        time.sleep(600)
    starts, ends = [], []
    for _ in range(setup.iterations):  # a timed loop that fills the window asked for, on the real clock
        starts.append(time.monotonic_ns())
        time.sleep(setup.min_window_s / setup.iterations)
        ends.append(time.monotonic_ns())
    result = wire(Result(window_start_ns=starts[0], window_end_ns=ends[-1], iteration_start_ns=starts,
                         iteration_end_ns=ends, output=np.ones(setup.inputs.latent.shape, np.float32),
                         output_sha256="x"))
    if mode in RESULT_CHANGES:
        result.update(RESULT_CHANGES[mode](result, starts))
    if mode == "truncated_result":
        out.write(encode(result)[:-10])
        sys.exit(0)
    ch.send(result)
    trace(starts[0], ends[-1])
    return 4 if mode == "bad_exit" else 0


def trace(start_ns: int, end_ns: int) -> None:
    """With FAKE_TRACE (a folder): the run's GPU binding and its timed window on the system-wide
    monotonic clock, one file per run, for a test of which runs overlapped where."""
    if folder := os.environ.get("FAKE_TRACE"):
        label = sys.argv[sys.argv.index("--run-label") + 1] if "--run-label" in sys.argv else str(os.getpid())
        line = json.dumps({"label": label, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                           "cuda_device_order": os.environ.get("CUDA_DEVICE_ORDER"), "start_ns": start_ns,
                           "end_ns": end_ns})
        with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
            f.write(line)


if "--forkserver" in sys.argv:  # the fake as a fork server: the real one, forking this fake's run()
    from workers.forkserver import serve_forks

    if os.environ.get("FAKE_FORKSERVER") == "crash":
        sys.exit(5)
    preload = ["gated_import"] if os.environ.get("FAKE_IMPORT_GATE") else []
    sys.exit(serve_forks(sys.argv[sys.argv.index("--forkserver") + 1], preload, run))
sys.exit(run())
