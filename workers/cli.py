"""`python -m workers`: the process the orchestrator starts in a cell's env for each run
(`--serve`), and the probe `orchestrate doctor` asks what a backend can use (`--probe`).
argparse, not click: a worker env holds only numpy, msgpack and its toolchain. The debugging
command `worker --cell ID` is the orchestrator's (orchestrator/run/debug_cell.py): it needs the
matrix, the envs and the pins, and it starts this process like a session does."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help="speak the msgpack protocol on stdin/stdout (used by orchestrate)")
    p.add_argument("--env-name", default="", help=argparse.SUPPRESS)
    p.add_argument("--run-label", default="", help=argparse.SUPPRESS)  # shows in ps which run a worker is
    p.add_argument("--probe", metavar="BACKEND", help="print what BACKEND can use on this host, as JSON")
    p.add_argument("--forkserver", metavar="SOCKET", help="import the toolchain once, then fork a worker per run "
                   "asked for on the Unix socket SOCKET (used by orchestrate)")
    p.add_argument("--preload", nargs="*", default=[], metavar="MODULE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.forkserver:
        from workers.forkserver import serve_forks
        from workers.serve import serve

        return serve_forks(args.forkserver, ["workers.serve", *args.preload], lambda: serve(args.env_name))
    if args.serve:
        from workers.contract.lifeline import exit_with_parent
        from workers.serve import serve

        exit_with_parent()  # an orphaned worker (orchestrator killed) must not run on; a forked one's is set as it forks
        code = serve(args.env_name)
        sys.stderr.flush()
        # The result is sent: leave without interpreter teardown, which for some toolchains
        # (torch.compile with CUDA graphs, its compile workers) takes longer than the run's
        # grace period to exit and would turn a measured run into a failed one.
        os._exit(code)
    if args.probe:
        import json

        from workers.backends import backend_module

        backend = backend_module(args.probe)
        print(json.dumps({"versions": backend.versions(), "devices": backend.probe()}))
        return 0
    p.print_help(sys.stderr)
    return 2
