#!/usr/bin/env python3
"""Stands in for `powermetrics` in tests: streams real captured plist documents, one every
`-i` milliseconds, each with the bytes that follow it in the capture (powermetrics' NUL
separator where the capture has it), cycling through the capture until killed.
CDB_REPLAY_FILE names the capture; CDB_REPLAY_PIDFILE, if set, receives this process's pid
(so a test can check it is gone); CDB_REPLAY_IDFILE, if set, receives its real, effective and
saved uids (so a test can check who it ran as).

CDB_REPLAY_MODE makes it misbehave as a broken meter would (MODES); CDB_REPLAY_MODES lists one
mode per start, in order, counted in the file CDB_REPLAY_COUNTER, so each run of a session can
meet another fault."""

import os
import re
import sys
import time
from pathlib import Path

# What each mode does to the capture's documents (a regex and its replacement), or says instead.
EDITS = {
    "nan": (rb"<key>cpu_energy</key>\s*<integer>\d+</integer>", b"<key>cpu_energy</key><real>nan</real>"),
    "huge": (rb"<key>cpu_energy</key>\s*<integer>\d+</integer>", b"<key>cpu_energy</key><real>1e308</real>"),
    "negative": (rb"<key>cpu_energy</key>\s*<integer>\d+</integer>", b"<key>cpu_energy</key><integer>-400000</integer>"),
    "zero_elapsed": (rb"<key>elapsed_ns</key><integer>\d+</integer>", b"<key>elapsed_ns</key><integer>0</integer>"),
}
EXIT_EARLY_STDERR = "powermetrics: cannot open [/dev/xcpm] [bold]: must be invoked as the superuser\n"


def mode() -> str:
    modes = os.environ.get("CDB_REPLAY_MODES")
    if not modes:
        return os.environ.get("CDB_REPLAY_MODE", "replay")
    counter = Path(os.environ["CDB_REPLAY_COUNTER"])
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    listed = modes.split(",")
    return listed[n] if n < len(listed) else "replay"


args = sys.argv[1:]
interval_s = int(args[args.index("-i") + 1]) / 1000 if "-i" in args else 1.0
if pidfile := os.environ.get("CDB_REPLAY_PIDFILE"):
    Path(pidfile).write_text(str(os.getpid()))
if idfile := os.environ.get("CDB_REPLAY_IDFILE"):
    with open(idfile, "a") as f:
        f.write(" ".join(map(str, os.getresuid())) + "\n")
how = mode()
out = sys.stdout.buffer
if how == "exit_early":
    sys.stderr.write(EXIT_EARLY_STDERR)
    sys.exit(1)
if how == "flood":  # a document that never ends
    out.write(b'<?xml version="1.0"?><plist version="1.0"><dict>')
    while True:
        out.write(b"<key>x</key><string>" + b"y" * (1 << 20) + b"</string>")
        out.flush()
if how == "garbage":
    while True:
        time.sleep(interval_s)
        out.write(b"\x00not a plist <plist \x01\x02 </plist>\x00")
        out.flush()
# Each document up to its </plist>, with the whitespace and NULs after it, byte for byte.
docs = re.findall(rb".*?</plist>[\s\x00]*", Path(os.environ["CDB_REPLAY_FILE"]).read_bytes(), re.S)
if how in EDITS:
    pattern, replacement = EDITS[how]
    docs = [re.sub(pattern, replacement, d) for d in docs]
while True:
    for doc in docs:
        time.sleep(interval_s)
        out.write(doc)
        out.flush()
