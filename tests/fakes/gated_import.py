"""A fork server's preload that stands for a slow toolchain import: it waits for the file
FAKE_IMPORT_GATE (at most FAKE_IMPORT_WAIT_S seconds), then writes when it finished, on the
monotonic clock, to FAKE_IMPORT_DONE; a test opens the gate from a meter to see which came first."""

import os
import time

_deadline = time.monotonic() + float(os.environ["FAKE_IMPORT_WAIT_S"])
while not os.path.exists(os.environ["FAKE_IMPORT_GATE"]) and time.monotonic() < _deadline:
    time.sleep(0.01)
with open(os.environ["FAKE_IMPORT_DONE"], "w") as f:
    f.write(str(time.monotonic_ns()))
