"""Run order. Interleaved by default: rounds over all cells, the cell order shuffled each round
with a recorded seed, so slow drifts of the host (heat, background load) spread over all cells
instead of landing on whichever ran last."""

from __future__ import annotations

import random
from dataclasses import dataclass

from orchestrator.config.matrix import Matrix, Timing

ORDER_SHOWN = 12  # runs of the order printed in the plan


@dataclass(frozen=True)
class PlannedRun:
    cell_id: str
    run_index: int  # 0-based, within its cell
    order_index: int  # 0-based position in the session


def plan_runs(cell_ids: list[str], runs: int, order: str, seed: int) -> list[PlannedRun]:
    rng = random.Random(seed)
    pairs: list[tuple[str, int]] = []
    if order == "sequential":
        pairs = [(c, r) for c in cell_ids for r in range(runs)]
    elif order == "interleaved":
        for r in range(runs):
            round_cells = list(cell_ids)
            rng.shuffle(round_cells)
            pairs += [(c, r) for c in round_cells]
    else:
        raise ValueError(f"unknown order {order!r}")
    return [PlannedRun(c, r, i) for i, (c, r) in enumerate(pairs)]


def describe_plan(matrix: Matrix, plan: list[PlannedRun], seed: int | None, done: int = 0) -> list[str]:
    """The plan as lines of text, the same before a session runs and for `orchestrate check`:
    the cells, the runs, the order. `seed` None: the order shown is an example, the session
    draws its own seed and records it."""
    cells = matrix.enabled_cells
    t = matrix.timing
    order = f"{t.order}, order seed {seed}" if seed is not None else f"{t.order}, order seed drawn when the session starts"
    head = f"plan: {len(cells)} cell(s) x {t.runs} run(s) = {len(plan)} runs ({order})"
    lines = [head + (f"; {len(plan) - done} still to run" if done else "")]
    width = max(len(c.id) for c in cells)
    for c in cells:
        lines.append(f"  {c.id:{width}}  {c.backend} {c.device or c.compute_unit} {c.precision}  "
                     f"{c.resolution}x{c.resolution}  env {c.env}")
    lines.append(f"  each run: {t.warmup} warmup + {t.iterations} timed step(s), a fresh worker, "
                 f"timeout {t.run_timeout_s:g} s; cooldown {_cooldown(t)}")
    lines.append("  " + describe_duration(matrix, len(plan) - done))
    shown = plan[:ORDER_SHOWN]
    more = f", ... ({len(plan) - len(shown)} more)" if len(plan) > len(shown) else ""
    example = "" if seed is not None else " (an example)"
    lines.append(f"  order{example}: " + ", ".join(f"{p.cell_id}#{p.run_index}" for p in shown) + more)
    return lines


def run_bounds(matrix: Matrix) -> tuple[float, float]:
    """Bounds on one run's time, from the matrix alone. The waits (cooldown, the idle baseline
    when a meter may run) are the floor; loading and stepping depend on the host, so the ceiling
    is the run reaching its timeout."""
    t = matrix.timing
    baseline = 0.0 if matrix.power.meter == "none" else matrix.power.baseline_s
    low, high = (t.cooldown_min_s, t.cooldown_max_s) if t.cooldown == "adaptive" else (t.cooldown_s, t.cooldown_s)
    return low + baseline, high + baseline + t.run_timeout_s


def describe_duration(matrix: Matrix, runs: int) -> str:
    low, high = run_bounds(matrix)
    return (f"duration: at least {span(runs * low)} in cooldowns and baselines alone, plus "
            f"loading and stepping (host-dependent); at most {span(runs * high)} "
            "if every run reached its timeout")


def span(seconds: float) -> str:
    """A duration as a person reads it: `1 h 05 min`, `3 min 07 s`, `42 s`."""
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _cooldown(t: Timing) -> str:
    if t.cooldown == "adaptive":
        return f"adaptive {t.cooldown_min_s:g}-{t.cooldown_max_s:g} s"
    return f"{t.cooldown_s:g} s"
