"""`worker`: the process the orchestrator starts for each run (`--serve`), and a debugging
command that runs one cell by itself (`--cell ID`): no cooldown, no power, per-iteration
latencies and output statistics printed. argparse, not click: an env pointed at a preinstalled
interpreter needs only numpy, msgpack and safetensors besides its toolchain."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help="speak the msgpack protocol on stdin/stdout (used by orchestrate)")
    p.add_argument("--env-name", default="", help=argparse.SUPPRESS)
    p.add_argument("--run-label", default="", help=argparse.SUPPRESS)  # shows in ps which run a worker is
    p.add_argument("--probe", metavar="BACKEND", help="print what BACKEND can use on this host, as JSON")
    p.add_argument("--cell", help="run this cell of the matrix once, in its env, and print what it measured")
    p.add_argument("--matrix", default="examples/quick.toml", help="matrix file (default: %(default)s)")
    p.add_argument("--iterations", type=int, help="timed iterations (default: the matrix's)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON", help="use an existing interpreter for env NAME")
    args = p.parse_args(argv)
    if args.serve:
        from workers.serve import serve

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
    if args.cell:
        from orchestrator.debug_run import debug_cell

        return debug_cell(args.matrix, args.cell, args.iterations, args.env)
    p.print_help(sys.stderr)
    return 2
