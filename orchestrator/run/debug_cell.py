"""`worker --cell ID`: one run of one cell in its env, for debugging a backend. Same pinned
weights and inputs and the same protocol as a session; no cooldown, no power, nothing saved."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from orchestrator.config.envs import discover, ensure_synced, parse_overrides
from orchestrator.config.matrix import load_matrix
from orchestrator.config.privileges import drop_to, invoking_user
from orchestrator.errors import UserError
from orchestrator.results.stats import within_run
from orchestrator.run.pins import pin_inputs, pin_model, setup_message
from orchestrator.run.worker_client import run_worker


def _say(line: str = "") -> None:
    print(line, flush=True)


def debug_cell(matrix_path: str, cell_id: str, iterations: int | None, env_overrides: list[str]) -> int:
    try:
        envs = discover(parse_overrides(env_overrides))
        matrix = load_matrix(Path(matrix_path), set(envs))
        cell = matrix.cell(cell_id)
        env = envs[cell.env]
        ensure_synced([env], log=_say)
        model = pin_model(matrix.model, matrix.path, log=_say)
        inputs = pin_inputs(matrix.inputs, [cell.resolution], matrix.path)[cell.resolution]
    except UserError as e:
        for line in e.lines:
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    if iterations is not None and iterations < 1:
        print("error: --iterations must be >= 1", file=sys.stderr)
        return 2
    log = Path(tempfile.mkdtemp(prefix="cdb-worker-")) / f"{cell.id}.log"
    _say(f"{cell.id}: {cell.backend} {cell.device or cell.compute_unit} {cell.precision} {cell.resolution}px "
         f"in env {env.name} ({env.python}); model {model.describe()}")
    outcome = run_worker(env, setup_message(matrix, cell, model, inputs, iterations=iterations),
                         label=f"{cell.id}/debug", log_path=log, timeout_s=matrix.timing.run_timeout_s)
    _say(f"worker log: {log}")
    if outcome.status != "ok":
        _say(f"{outcome.status}: {outcome.reason}")
        return 0 if outcome.status == "unsupported" else 1
    ready, res = outcome.ready, outcome.result
    assert ready is not None and res is not None
    _say(f"loaded in {ready.load_s:.2f} s, warmup {ready.warmup_s:.2f} s; realized {ready.realized}")
    _say(f"versions {ready.versions}")
    lat = (np.asarray(res.iteration_end_ns) - np.asarray(res.iteration_start_ns)) / 1e6
    for i, ms in enumerate(lat):
        _say(f"  iteration {i:3d}: {ms:9.3f} ms")
    w = within_run(lat)
    _say(f"latency ms: median {w.median:.3f}  IQR {w.iqr:.3f}  min {w.min:.3f}  mean {w.mean:.3f}  (n={w.n})")
    out = np.asarray(res.output, dtype=np.float64)
    finite = bool(np.all(np.isfinite(out)))
    _say(f"output {list(out.shape)}: finite={finite} mean={out.mean():.6g} std={out.std():.6g} "
         f"min={out.min():.6g} max={out.max():.6g} sha256={res.output_sha256}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `worker` command: `worker --cell ID` runs one cell once in its env. It measures no
    power, so under sudo it first becomes the invoking user for good, like the orchestrator."""
    if (user := invoking_user()) is not None:
        drop_to(user)
    p = argparse.ArgumentParser(prog="worker", description="Run one cell of a matrix once, in its env, "
                                "and print what it measured: no cooldown, no power, nothing saved.")
    p.add_argument("--cell", required=True, help="the cell's id")
    p.add_argument("--matrix", default="examples/quick.toml", help="matrix file (default: %(default)s)")
    p.add_argument("--iterations", type=int, help="timed iterations (default: the matrix's)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON", help="use an existing interpreter for env NAME")
    args = p.parse_args(argv)
    return debug_cell(args.matrix, args.cell, args.iterations, args.env)
