"""A worker that misbehaves on purpose (FAKE_MODE), to drive the runner through real pipes."""

import os
import signal
import sys
import time

import numpy as np

from workers.contract.protocol import Channel

mode = os.environ["FAKE_MODE"]
out = os.fdopen(os.dup(1), "wb", buffering=0)
ch = Channel(os.fdopen(os.dup(0), "rb", buffering=0), out)
ch.send({"type": "hello", "pid": os.getpid(), "uid": os.getuid(), "python": "fake"})
if mode == "crash":
    print("fake worker: giving up", file=sys.stderr)
    sys.exit(3)
if mode == "hang":
    time.sleep(600)
setup = ch.recv()
if mode == "garbage":
    out.write(b"\xc1\xc1\xc1 not msgpack")
    time.sleep(5)
    sys.exit(0)
if mode == "error":
    ch.send({"type": "error", "message": "RuntimeError: out of memory"})
    sys.exit(1)
if mode == "unsupported":
    ch.send({"type": "unsupported", "reason": "MPS is not available", "versions": {"fake": "1"}})
    sys.exit(0)
ch.send({"type": "ready", "load_s": 0.1, "warmup_s": 0.0, "realized": {"device": "cpu"}, "versions": {"fake": "1"}})
ch.recv()
if mode == "selfkill":
    os.kill(os.getpid(), signal.SIGKILL)
ch.send({"type": "result", "window_start_ns": 1, "window_end_ns": 3, "iteration_start_ns": [1, 2],
         "iteration_end_ns": [2, 3], "output": np.ones((2, 4, 1, 1), np.float32), "output_sha256": "x",
         "echo_iterations": setup["iterations"]})
sys.exit(4 if mode == "bad_exit" else 0)
