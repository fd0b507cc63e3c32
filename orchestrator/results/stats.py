"""Statistics, the same code for every per-run metric: latency, energy per step (total and per
channel), equivalence. Within a run over its iterations; across a cell's runs with one value per
run. Percentiles use numpy's default linear interpolation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAD_SCALE = 1.4826  # makes the MAD estimate the standard deviation of normal data
OUTLIER_MADS = 3.0


@dataclass(frozen=True)
class WithinRun:
    """Per-iteration values of one run."""

    n: int
    median: float
    iqr: float
    min: float
    mean: float


@dataclass(frozen=True)
class AcrossRuns:
    """One value per run, summarised over a cell's runs."""

    n: int
    median: float
    p10: float
    p90: float
    mad: float
    min: float
    max: float
    outliers: list[int]  # positions (into the values given) more than 3 scaled MADs from the median


def within_run(values: Sequence[float] | np.ndarray) -> WithinRun:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no values")
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return WithinRun(n=int(a.size), median=float(q50), iqr=float(q75 - q25), min=float(a.min()), mean=float(a.mean()))


def outliers(values: Sequence[float] | np.ndarray) -> list[int]:
    """Positions further than 3 scaled MADs from the median. When the MAD is 0 (over half the
    runs identical) any value off the median is an outlier: it differs from the bulk exactly."""
    a = np.asarray(values, dtype=np.float64)
    if a.size < 3:
        return []
    med = np.median(a)
    dev = np.abs(a - med)
    mad = float(np.median(dev))
    if mad == 0.0:
        return [int(i) for i in np.flatnonzero(dev > 0)]
    return [int(i) for i in np.flatnonzero(dev > OUTLIER_MADS * MAD_SCALE * mad)]


def across_runs(values: Sequence[float]) -> AcrossRuns:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no values")
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return AcrossRuns(
        n=int(a.size), median=float(med), p10=float(p10), p90=float(p90),
        mad=float(np.median(np.abs(a - med))), min=float(a.min()), max=float(a.max()), outliers=outliers(a),
    )
