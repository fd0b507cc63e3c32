"""`worker --cell ID`: one run of one cell in its env, for debugging a backend. Same pinned
weights and inputs and the same protocol as a session; no cooldown, no power, nothing saved."""

from __future__ import annotations

import argparse
import difflib
import sys
import tomllib
from pathlib import Path

import numpy as np

from orchestrator.config.envs import discover, ensure_synced, parse_overrides
from orchestrator.config.matrix import load_matrix
from orchestrator.config.paths import REPO_ROOT
from orchestrator.config.privileges import drop_to, invoking_user
from orchestrator.errors import UserError
from orchestrator.results.records import current_cell_id
from orchestrator.results.stats import within_run
from orchestrator.run import scratch
from orchestrator.run.pins import pin_inputs, pin_model, setup_message
from orchestrator.run.worker_client import run_worker

LOG_TAIL = 30  # lines of a failed worker's log shown before its folder is removed


def _say(line: str = "") -> None:
    print(line, flush=True)


def _matrix_files() -> list[Path]:
    """Where `--cell` is looked up without `--matrix`: the study's matrix.toml, then the examples;
    in the current folder, then in this checkout."""
    roots = list(dict.fromkeys([Path.cwd().resolve(), REPO_ROOT]))
    files = [f for root in roots for f in [root / "matrix.toml", *sorted((root / "examples").glob("*.toml"))]]
    return [f for f in files if f.is_file()]


def _cell_ids(path: Path) -> list[str]:
    """The cell ids a matrix file declares, read without validating the rest of it."""
    try:
        cells = tomllib.loads(path.read_text()).get("cells", [])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    return [c["id"] for c in cells if isinstance(c, dict) and isinstance(c.get("id"), str)] if isinstance(cells, list) else []


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_matrix(cell_id: str) -> tuple[Path, str]:
    """The first matrix file of `_matrix_files` that has `cell_id` (or the id the study gives it
    now, for one of its old ids), and that id; UserError listing the close matches otherwise."""
    files = _matrix_files()
    ids = {f: _cell_ids(f) for f in files}
    for wanted in dict.fromkeys([cell_id, current_cell_id(cell_id)]):
        for f in files:
            if wanted in ids[f]:
                return f, wanted
    everywhere = {i: f for f in reversed(files) for i in ids[f]}
    close = difflib.get_close_matches(cell_id, list(everywhere), n=6, cutoff=0.5)
    raise UserError(f"no cell {cell_id!r} in {', '.join(_shown(f) for f in files) or 'any matrix file'} "
                    "(name the file with --matrix PATH)",
                    *(["close matches: " + ", ".join(f"{i} ({_shown(everywhere[i])})" for i in close)] if close else []))


def debug_cell(matrix_path: str | None, cell_id: str, iterations: int | None, env_overrides: list[str]) -> int:
    try:
        if matrix_path is None:
            found, cell_id = find_matrix(cell_id)
            matrix_path = _shown(found)
            _say(f"cell {cell_id} from {matrix_path}")
        if iterations is not None and iterations < 1:
            raise UserError("--iterations must be >= 1")
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
    _say(f"{cell.id}: {cell.backend} {cell.device or cell.compute_unit} {cell.precision} {cell.resolution}px "
         f"in env {env.name} ({env.python}); model {model.describe()}")
    with scratch.temporary("worker") as folder:  # the worker's log, removed after
        log = folder / f"{cell.id}.log"
        outcome = run_worker(env, setup_message(matrix, cell, model, inputs, iterations=iterations),
                             label=f"{cell.id}/debug", log_path=log, timeout_s=matrix.timing.run_timeout_s)
        if outcome.status == "failed" and log.is_file():
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
            _say(f"the worker's log, last {len(tail)} lines:")
            for line in tail:
                _say(f"  | {line}")
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
    if (faults := res.minor_faults_per_step()) is not None:
        _say(f"minor page faults per timed step: {faults:.1f}")
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
    p.add_argument("--matrix", help="matrix file (default: the first of matrix.toml and examples/*.toml that has the cell)")
    p.add_argument("--iterations", type=int, help="timed iterations (default: the matrix's)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=PYTHON", help="use an existing interpreter for env NAME")
    args = p.parse_args(argv)
    return debug_cell(args.matrix, args.cell, args.iterations, args.env)
