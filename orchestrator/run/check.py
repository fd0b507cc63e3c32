"""`orchestrate check MATRIX`: everything a session verifies before its first run, without
running anything: the matrix, the pinned inputs, the envs and paths it resolves, the folder
results go to, and the plan, with its duration estimated from a previous session where there is
one. No env is synced, no model is written or hashed, no worker starts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from orchestrator.config.envs import Env
from orchestrator.config.matrix import Matrix
from orchestrator.config.plan import plan_runs
from orchestrator.console import Display
from orchestrator.errors import UserError
from orchestrator.results.estimate import estimate_lines, latest_estimate
from orchestrator.results.store import writable_problem
from orchestrator.run.pins import pin_inputs, synthetic_path


def check_matrix(matrix: Matrix, envs: dict[str, Env], out: Path, display: Display,
                 previous: Path | None = None) -> None:
    """Print what a session of `matrix` would use and run, and how long it would take after
    `previous` (a session folder; None: the newest session of this matrix under `out`);
    UserError naming every problem."""
    m = matrix
    problems: list[str] = []
    seed = m.timing.order_seed
    plan = plan_runs([c.id for c in m.enabled_cells], m.timing.runs, m.timing.order, seed or 0)
    counts = Counter(p.cell_id for p in plan)
    planned = {c.id: counts[c.id] for c in m.enabled_cells}
    estimate: list[str] = []
    try:
        estimate = latest_estimate(m, planned, out) if previous is None else estimate_lines(m, planned, previous)
    except UserError as e:
        problems += e.lines
    try:
        pin_inputs(m.inputs, m.resolutions, m.path)
    except UserError as e:
        problems += e.lines
    if problem := writable_problem(out, create=False):
        problems.append(f"--out {out}: results cannot be written there ({problem})")
    if problems:
        raise UserError(*problems)
    display.log(f"matrix {m.path}: valid (sha256 {m.sha256[:12]}…); inputs match their pins at "
                f"{', '.join(f'{r}x{r}' for r in m.resolutions)}")
    display.log(f"model: {_model(m)}")
    for name in sorted({c.env for c in m.enabled_cells} | {m.equivalence.env}):
        env = envs[name]
        state = "synced" if env.synced else f"a session syncs it first; {env.unready_reason}"
        display.log(f"env {name}: {env.python} ({state})")
    display.log(f"results: {out}/<session-id>/")
    display.plan(m, plan, seed)
    for line in estimate:
        display.log(line)


def _model(m: Matrix) -> str:
    spec = m.model
    if spec.synthetic:
        path = synthetic_path(spec)
        state = "cached" if path.is_file() else "written by the session's first step"
        return f"synthetic {spec.preset} (seed {spec.seed}): {path} ({state})"
    assert spec.path is not None  # the loader requires it for a checkpoint
    return f"checkpoint {spec.path} ({spec.path.stat().st_size} bytes; its sha256 is checked when a session starts)"
