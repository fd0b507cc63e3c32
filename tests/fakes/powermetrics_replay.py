#!/usr/bin/env python3
"""Stands in for `powermetrics` in tests: streams real captured plist documents, one every
`-i` milliseconds, each with the bytes that follow it in the capture (powermetrics' NUL
separator where the capture has it), cycling through the capture until killed.
CDB_REPLAY_FILE names the capture; CDB_REPLAY_PIDFILE, if set, receives this process's pid
(so a test can check it is gone)."""

import os
import re
import sys
import time
from pathlib import Path

args = sys.argv[1:]
interval_s = int(args[args.index("-i") + 1]) / 1000 if "-i" in args else 1.0
# Each document up to its </plist>, with the whitespace and NULs after it, byte for byte.
docs = re.findall(rb".*?</plist>[\s\x00]*", Path(os.environ["CDB_REPLAY_FILE"]).read_bytes(), re.S)
if pidfile := os.environ.get("CDB_REPLAY_PIDFILE"):
    Path(pidfile).write_text(str(os.getpid()))
out = sys.stdout.buffer
while True:
    for doc in docs:
        time.sleep(interval_s)
        out.write(doc)
        out.flush()
