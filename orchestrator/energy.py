"""Energy arithmetic (DESIGN section 3): from meter intervals and a run's windows to joules per
UNet step, per channel and in total. Medians of interval power, not means, so one odd sample
does not move the result; the overlap-weighted gross energy is kept beside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.meters.base import Interval

STEPS_PER_IMAGE = 50
TOTAL = "total"


def overlap_energy(intervals: Sequence[Interval], a: int, b: int) -> dict[str, float]:
    """Joules per channel in [a, b]: each interval contributes the share of its energy that
    its overlap with the window is of its duration (power assumed flat inside an interval)."""
    out: dict[str, float] = {}
    for iv in intervals:
        span = iv.end_ns - iv.start_ns
        overlap = min(b, iv.end_ns) - max(a, iv.start_ns)
        if span <= 0 or overlap <= 0:
            continue
        share = overlap / span
        for ch, j in iv.joules.items():
            out[ch] = out.get(ch, 0.0) + j * share
    return out


def with_total(values: dict[str, float]) -> dict[str, float]:
    return {**values, TOTAL: float(sum(values.values()))} if values else {}


def inside(intervals: Sequence[Interval], a: int, b: int) -> list[Interval]:
    """Intervals whose midpoint lies in [a, b]: each belongs to the window it mostly covers."""
    return [iv for iv in intervals if a <= (iv.start_ns + iv.end_ns) // 2 <= b]


def median_power(intervals: Sequence[Interval], a: int, b: int) -> dict[str, float]:
    """Median interval power per channel (and of the total) in [a, b]. A window shorter than
    any interval falls back to its overlap-weighted energy over its length."""
    ivs = [iv for iv in inside(intervals, a, b) if iv.seconds > 0]
    if not ivs:
        seconds = (b - a) / 1e9
        return {ch: j / seconds for ch, j in with_total(overlap_energy(intervals, a, b)).items()} if seconds > 0 else {}
    channels = sorted({ch for iv in ivs for ch in iv.joules})
    per = {ch: [iv.joules.get(ch, 0.0) / iv.seconds for iv in ivs] for ch in channels}
    per[TOTAL] = [sum(iv.joules.values()) / iv.seconds for iv in ivs]
    return {ch: float(np.median(v)) for ch, v in per.items()}


@dataclass(frozen=True)
class RunEnergy:
    baseline_w: dict[str, float]
    active_w: dict[str, float]
    energy_per_step_j: dict[str, float]  # (active - baseline) x window seconds / iterations
    gross_energy_per_step_j: dict[str, float]  # active x window seconds / iterations
    window_energy_j: dict[str, float]  # overlap-weighted joules in the timed window (gross)
    estimated_energy_per_50_step_image_j: dict[str, float]  # 50 x energy_per_step_j: an estimate
    intervals_in_window: int
    intervals_in_baseline: int


def run_energy(intervals: Sequence[Interval], baseline: tuple[int, int] | None, window: tuple[int, int],
               iterations: int) -> RunEnergy:
    w0, w1 = window
    seconds = (w1 - w0) / 1e9
    active = median_power(intervals, w0, w1)
    base = median_power(intervals, *baseline) if baseline else {}
    net = {ch: (p - base.get(ch, 0.0)) * seconds / iterations for ch, p in active.items()} if base else {}
    return RunEnergy(
        baseline_w=base,
        active_w=active,
        energy_per_step_j=net,
        gross_energy_per_step_j={ch: p * seconds / iterations for ch, p in active.items()},
        window_energy_j=with_total(overlap_energy(intervals, w0, w1)),
        estimated_energy_per_50_step_image_j={ch: STEPS_PER_IMAGE * j for ch, j in net.items()},
        intervals_in_window=len(inside(intervals, w0, w1)),
        intervals_in_baseline=len(inside(intervals, *baseline)) if baseline else 0,
    )
