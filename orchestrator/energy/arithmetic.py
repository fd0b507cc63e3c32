"""Energy arithmetic (docs/methodology.md, "Energy"): from meter intervals and a run's windows
to joules per UNet step, per channel and in total.

The baseline is a level (the loaded, idle worker), so it is the median interval power: one odd
sample does not move it. The timed window is a quantity: its energy is what the meter counted
over it, the integral, not a median of interval powers. (A median times the window's length
misses the energy of a window whose power changes: on an H100, runs whose step time swung with
the host CPU inside one window came out up to 10.5% below and 5.4% above their counted energy.)

Window edges: a meter interval that straddles an edge is split assuming the part outside the
window ran at the baseline power (the worker sits loaded and idle right before and right after
its loop), so the window keeps the rest. Splitting in proportion to time instead would hand a
share of the loop's energy to the idle side, a bias of up to a quarter of an interval's excess
energy per edge. Without a baseline, edges are split in proportion to time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Interval:
    """What every meter yields and all the arithmetic below consumes: joules per channel counted
    between two instants on the `time.monotonic_ns()` axis."""

    start_ns: int
    end_ns: int
    joules: dict[str, float]
    duration_ns: int | None = None  # the source's own measure of the interval, when it has one

    @property
    def seconds(self) -> float:
        """Duration for power: the source's own where given (powermetrics' elapsed_ns), so that
        where a sample is placed on our time axis never changes the power it reports."""
        return (self.duration_ns if self.duration_ns is not None else self.end_ns - self.start_ns) / 1e9


STEPS_PER_IMAGE = 50
TOTAL = "total"
MAX_CHANNEL_W = 5000.0  # far above any one channel of any meter here (an H200 draws 700 W): a reading above it is a fault


def invalid_reason(intervals: Sequence[Interval]) -> str | None:
    """Why these meter values cannot be energy, or None: a reading that is not finite or is
    negative, a sample that claims no duration, or a power no channel can draw. A run whose meter
    says such things records no energy (flag `energy_invalid`), so the values never reach a
    statistic."""
    for i, iv in enumerate(intervals):
        if iv.duration_ns is not None and iv.duration_ns <= 0:
            return f"sample {i} lasts {iv.duration_ns} ns"
        for ch, j in iv.joules.items():
            if not isinstance(j, (int, float)) or not math.isfinite(j):
                return f"sample {i}: {ch} energy is {j!r}"
            if j < 0:
                return f"sample {i}: {ch} energy is negative ({j!r} J)"
            if iv.seconds > 0 and j / iv.seconds > MAX_CHANNEL_W:
                return f"sample {i}: {ch} at {j / iv.seconds!r} W, above the {MAX_CHANNEL_W:g} W no channel draws"
    return None


def overlap_energy(intervals: Sequence[Interval], a: int, b: int,
                   outside_w: dict[str, float] | None = None) -> dict[str, float]:
    """Joules per channel in [a, b]: each interval's own power (its joules over its own
    duration, `Interval.seconds`) integrated over where it lies on the time axis, which for a
    counter is exactly its joules. An interval that straddles an edge gives the window that
    energy less `outside_w` x its time outside the window (kept within 0 and that energy) for
    channels that have an `outside_w`, else the share its overlap is of its span."""
    out: dict[str, float] = {}
    outside_w = outside_w or {}
    for iv in intervals:
        span = iv.end_ns - iv.start_ns
        overlap = min(b, iv.end_ns) - max(a, iv.start_ns)
        if span <= 0 or overlap <= 0 or iv.seconds <= 0:
            continue
        placed = span / 1e9 / iv.seconds
        outside_s = (span - overlap) / 1e9
        for ch, j in iv.joules.items():
            j *= placed
            if ch in outside_w:
                part = min(max(j - outside_w[ch] * outside_s, 0.0), j)
            else:
                part = j * overlap / span
            out[ch] = out.get(ch, 0.0) + part
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
    baseline_w: dict[str, float]  # median interval power in the baseline window
    active_w: dict[str, float]  # window energy / window seconds: the window's mean power
    energy_per_step_j: dict[str, float]  # (active - baseline) x window seconds / iterations
    gross_energy_per_step_j: dict[str, float]  # active x window seconds / iterations
    window_energy_j: dict[str, float]  # joules the meter counted in the timed window (gross)
    estimated_energy_per_50_step_image_j: dict[str, float]  # 50 x energy_per_step_j: an estimate
    intervals_in_window: int
    intervals_in_baseline: int


def run_energy(intervals: Sequence[Interval], baseline: tuple[int, int] | None, window: tuple[int, int],
               iterations: int) -> RunEnergy:
    w0, w1 = window
    seconds = (w1 - w0) / 1e9
    base = median_power(intervals, *baseline) if baseline else {}
    window_j = with_total(overlap_energy(intervals, w0, w1, base))
    active = {ch: j / seconds for ch, j in window_j.items()} if seconds > 0 else {}
    net = {ch: (p - base.get(ch, 0.0)) * seconds / iterations for ch, p in active.items()} if base else {}
    return RunEnergy(
        baseline_w=base,
        active_w=active,
        energy_per_step_j=net,
        gross_energy_per_step_j={ch: p * seconds / iterations for ch, p in active.items()},
        window_energy_j=window_j,
        estimated_energy_per_50_step_image_j={ch: STEPS_PER_IMAGE * j for ch, j in net.items()},
        intervals_in_window=len(inside(intervals, w0, w1)),
        intervals_in_baseline=len(inside(intervals, *baseline)) if baseline else 0,
    )


def record_fields(e: RunEnergy, nvml_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run record's energy fields (docs/results-format.md, runs.jsonl) from its arithmetic;
    with the worker's own NVML reads (`--nvml-check`), their comparison with the harness's
    window energy."""
    fields: dict[str, Any] = dict(
        baseline_w=e.baseline_w.get(TOTAL), active_w=e.active_w.get(TOTAL),
        energy_per_step_j=e.energy_per_step_j.get(TOTAL),
        gross_energy_per_step_j=e.gross_energy_per_step_j.get(TOTAL),
        estimated_energy_per_50_step_image_j=e.estimated_energy_per_50_step_image_j.get(TOTAL),
        energy_by_channel={ch: {
            "baseline_w": e.baseline_w.get(ch), "active_w": e.active_w[ch],
            "energy_per_step_j": e.energy_per_step_j.get(ch),
            "gross_energy_per_step_j": e.gross_energy_per_step_j[ch],
            "estimated_energy_per_50_step_image_j": e.estimated_energy_per_50_step_image_j.get(ch),
            "window_energy_j": e.window_energy_j.get(ch),
        } for ch in sorted(e.active_w)},
        meter_intervals_in_window=e.intervals_in_window,
        meter_intervals_in_baseline=e.intervals_in_baseline,
    )
    if nvml_check:
        harness_j = e.window_energy_j.get("gpu")
        fields["nvml_check"] = {**nvml_check, "harness_window_j": harness_j,
                                "ratio": harness_j / nvml_check["joules"] if harness_j and nvml_check["joules"] else None}
    return fields
