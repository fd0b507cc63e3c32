"""A worker that misbehaves on purpose (FAKE_MODE), to drive the runner through real pipes.
It reads its setup with the protocol's own message types, so a well-formed run proves the
orchestrator sends a setup a worker accepts."""

import os
import signal
import sys
import time

import numpy as np

from workers.contract.messages import Hello, Measure, Ready, Result, Setup, Unsupported, parse, wire
from workers.contract.protocol import PROTOCOL_VERSION, Channel

mode = os.environ["FAKE_MODE"]
out = os.fdopen(os.dup(1), "wb", buffering=0)
ch = Channel(os.fdopen(os.dup(0), "rb", buffering=0), out)
hello = wire(Hello(protocol=PROTOCOL_VERSION, pid=os.getpid(), uid=os.getuid(), python="fake"))
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
if mode == "unsupported":
    ch.send(wire(Unsupported(reason="MPS is not available", versions={"fake": "1"})))
    sys.exit(0)
if mode == "surprise":
    ch.send({"type": "surprise"})
    sys.exit(0)
ch.send(wire(Ready(load_s=0.1, warmup_s=0.0, realized={"device": "cpu"}, versions={"fake": "1"},
                   model_sha256=setup.model.sha256)))
parse(ch.recv(), Measure)
if mode == "selfkill":
    os.kill(os.getpid(), signal.SIGKILL)
starts = list(range(1, setup.iterations + 1))
result = wire(Result(window_start_ns=starts[0], window_end_ns=starts[-1] + 1, iteration_start_ns=starts,
                     iteration_end_ns=[s + 1 for s in starts], output=np.ones((2, 4, 1, 1), np.float32),
                     output_sha256="x"))
if mode == "bad_field":
    result["iteration_start_ns"] = [*starts[:-1], "x"]
ch.send(result)
sys.exit(4 if mode == "bad_exit" else 0)
