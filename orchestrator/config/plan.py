"""Run order. Interleaved by default: rounds over all cells, the cell order shuffled each round
with a recorded seed, so slow drifts of the host (heat, background load) spread over all cells
instead of landing on whichever ran last."""

from __future__ import annotations

import random
from dataclasses import dataclass


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
