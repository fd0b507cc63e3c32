"""Comparing two cells' per-run values (docs/reports.md, "Comparisons"): ratio of medians, the
ratio range from dividing their p10-p90 intervals, a Mann-Whitney U test with the
Hodges-Lehmann shift and its confidence interval, and a one-line verdict; for paired values (a
benchmark's interleaved rounds) the Wilcoxon signed-rank test with its own Hodges-Lehmann interval.

Written here rather than taken from scipy: the orchestrator needs only these few lines, exact for
the small samples a study has (7 runs a cell), and scipy would be the largest dependency of the
root project for them. Tests check them against hand-computed values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from orchestrator.results.records import RunRecord
from orchestrator.results.stats import across_runs
from orchestrator.results.values import run_values
from workers.contract.typed import field

ALPHA = 0.05
EXACT_MAX_N = 50  # exact null distribution up to this many runs a side (and no ties)
Z_975 = 1.959963984540054


@dataclass(frozen=True)
class RankTest:
    """Mann-Whitney U test of `other` against `baseline`, with the Hodges-Lehmann shift."""

    u: float = field(doc="Mann-Whitney U of `other`: pairs where other > baseline, ties counted half")
    p: float = field(doc="two-sided p-value")
    method: str = field(doc="`exact` or `normal approximation (tie-corrected)`")
    hl_shift: float = field(doc="Hodges-Lehmann shift: median of other_i - baseline_j, in the metric's unit")
    hl_ci: tuple[float, float] = field(doc="its confidence interval [low, high]")
    hl_ci_level: float = field(doc="the confidence the interval actually has (exact intervals are discrete)")


@dataclass(frozen=True)
class Comparison:
    """One metric of one cell (`other`) against another (`baseline`), over each side's ok runs."""

    metric: str = field(doc="`latency` (run median latency per step) or `energy` (net energy per step)")
    unit: str = field(doc="`ms` or `J`")
    baseline: str = field(doc="the baseline cell (`SESSION:CELL` across sessions)")
    other: str = field(doc="the cell compared with it")
    n_baseline: int = field(unit="count", doc="baseline runs with a value")
    n_other: int = field(unit="count", doc="other runs with a value")
    baseline_median: float = field(doc="across the baseline's runs")
    other_median: float = field(doc="across the other's runs")
    ratio_of_medians: float | None = field(doc="other / baseline; null unless every value on both sides is > 0")
    ratio_range: tuple[float, float] | None = field(doc="other's p10-p90 divided by the baseline's p10-p90 "
                                                        "(interval division); null as the ratio")
    intervals_disjoint: bool = field(doc="the two p10-p90 intervals do not overlap")
    test: RankTest | None = field(doc="the rank test; null with fewer than 2 runs on a side")
    verdict: str = field(doc="one line: size and direction, overlap, p (or why undecided)")


@lru_cache(maxsize=256)
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """Number of orderings of m + n distinct values giving each U = 0..m*n (the null distribution)."""
    if m == 0 or n == 0:
        return (1,)
    a, b = _u_counts(m - 1, n), _u_counts(m, n - 1)
    out = [0] * (m * n + 1)
    for u, c in enumerate(b):  # the largest value belongs to the baseline: U unchanged
        out[u] += c
    for u, c in enumerate(a):  # it belongs to `other`: it beats all n baseline values
        out[u + n] += c
    return tuple(out)


def _cdf(m: int, n: int, k: int) -> float:
    """P(U <= k) under the null, exact."""
    counts = _u_counts(m, n)
    return sum(counts[: max(k + 1, 0)]) / math.comb(m + n, m)


def _tie_sigma(values: np.ndarray, m: int, n: int) -> float:
    big_n = m + n
    _, t = np.unique(values, return_counts=True)
    ties = float(np.sum(t**3 - t))
    return math.sqrt(m * n / 12.0 * ((big_n + 1) - ties / (big_n * (big_n - 1))))


def rank_test(other: Sequence[float], baseline: Sequence[float]) -> RankTest:
    x = np.asarray(other, dtype=np.float64)
    y = np.asarray(baseline, dtype=np.float64)
    m, n = x.size, y.size
    u = float(np.sum(x[:, None] > y[None, :]) + 0.5 * np.sum(x[:, None] == y[None, :]))
    diffs = np.sort((x[:, None] - y[None, :]).ravel())
    pooled = np.concatenate([x, y])
    exact = np.unique(pooled).size == pooled.size and max(m, n) <= EXACT_MAX_N
    if exact:
        lower = min(u, m * n - u)
        p = min(1.0, 2.0 * _cdf(m, n, int(lower)))
        # [D(k+1), D(mn-k)] misses the true shift with probability 2 P(U <= k): the largest k
        # keeping that <= alpha; with too few runs for any, the full range at its own level.
        k = 0
        while _cdf(m, n, k + 1) <= ALPHA / 2:
            k += 1
        level = 1.0 - 2.0 * _cdf(m, n, k)
        method = "exact"
    else:
        sigma = _tie_sigma(pooled, m, n)
        z = (abs(u - m * n / 2.0) - 0.5) / sigma if sigma > 0 else 0.0
        p = min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0)))
        k = max(0, math.floor(m * n / 2.0 - 0.5 - Z_975 * sigma))
        level = 1.0 - math.erfc((m * n / 2.0 - k - 0.5) / sigma / math.sqrt(2.0)) if sigma > 0 else 0.0
        method = "normal approximation (tie-corrected)"
    ci = (float(diffs[k]), float(diffs[diffs.size - k - 1]))
    return RankTest(u=u, p=p, method=method, hl_shift=float(np.median(diffs)), hl_ci=ci, hl_ci_level=level)


@dataclass(frozen=True)
class SignedRankTest:
    """Wilcoxon signed-rank test of paired differences against 0, with the Hodges-Lehmann estimate."""

    w: float = field(doc="sum of the ranks of |d| over the positive differences (zeros dropped, ties midranked)")
    n: int = field(unit="count", doc="non-zero differences")
    p: float = field(doc="two-sided p-value")
    method: str = field(doc="`exact` or `normal approximation (tie-corrected)`")
    hl_shift: float = field(doc="Hodges-Lehmann estimate: median of the Walsh averages (d_i + d_j) / 2, i <= j")
    hl_ci: tuple[float, float] = field(doc="its confidence interval [low, high]")
    hl_ci_level: float = field(doc="the confidence the interval actually has (exact intervals are discrete)")


@lru_cache(maxsize=64)
def _w_counts(n: int) -> tuple[int, ...]:
    """Number of the 2^n sign patterns of ranks 1..n giving each W = 0..n(n+1)/2 (the null distribution)."""
    out = [1]
    for r in range(1, n + 1):
        grown = out + [0] * r
        for w, c in enumerate(out):
            grown[w + r] += c
        out = grown
    return tuple(out)


def signed_rank_test(diffs: Sequence[float]) -> SignedRankTest:
    """Paired differences (one per round: other - baseline, or a log ratio): unlike `rank_test`,
    which treats two sides as independent samples, it uses the pairing, so a drift of the host
    that moves both values of a pair cancels. Exact up to EXACT_MAX_N pairs without ties or zeros."""
    d = np.asarray(diffs, dtype=np.float64)
    i, j = np.triu_indices(d.size)
    walsh = np.sort((d[i] + d[j]) / 2.0)
    big_n = walsh.size
    nz = d[d != 0]
    n = nz.size
    values, inverse, t = np.unique(np.abs(nz), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(t) - (t - 1) / 2.0)[inverse]  # midranks: a group of t equal |d| shares its ranks' mean
    w = float(ranks[nz > 0].sum())
    top = n * (n + 1) / 2.0
    if n == d.size and values.size == n and n <= EXACT_MAX_N:
        counts = np.cumsum(_w_counts(n)) / 2.0**n
        p = min(1.0, 2.0 * float(counts[int(min(w, top - w))]))
        # [A(k+1), A(N-k)] of the N Walsh averages misses the true shift with probability 2 P(W <= k)
        k = 0
        while counts[k + 1] <= ALPHA / 2:
            k += 1
        level = 1.0 - 2.0 * float(counts[k])
        method = "exact"
    else:
        sigma = math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0 - float(np.sum(t**3 - t)) / 48.0) if n else 0.0
        z = (abs(w - top / 2.0) - 0.5) / sigma if sigma > 0 else 0.0
        p = min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0)))
        # on all N Walsh averages, as the interval is: zeros dropped from the test, not from the estimate
        s_all = math.sqrt(d.size * (d.size + 1) * (2 * d.size + 1) / 24.0)
        k = max(0, math.floor(big_n / 2.0 - 0.5 - Z_975 * s_all))
        level = 1.0 - math.erfc((big_n / 2.0 - k - 0.5) / s_all / math.sqrt(2.0)) if s_all > 0 else 0.0
        method = "normal approximation (tie-corrected)"
    ci = (float(walsh[k]), float(walsh[big_n - k - 1]))
    return SignedRankTest(w=w, n=n, p=p, method=method, hl_shift=float(np.median(walsh)), hl_ci=ci, hl_ci_level=level)


_WORDS = {"latency": ("slower", "faster"), "energy": ("more energy", "less energy")}


def _size(ratio: float, metric: str, ratio_range: tuple[float, float]) -> str:
    """'2.8% slower', or for large factors '6.0-6.5x lower energy' (the range from the intervals)."""
    up, down = _WORDS.get(metric, ("higher", "lower"))
    if 1 / 1.5 < ratio < 1.5:
        return f"{abs(ratio - 1) * 100:.1f}% {up if ratio >= 1 else down}"
    lo, hi = ratio_range
    if ratio >= 1:
        return f"{ratio:.2f}x ({lo:.2f}-{hi:.2f}x) {up}"
    return f"{1 / ratio:.2f}x ({1 / hi:.2f}-{1 / lo:.2f}x) {down.replace('less', 'lower')}"


def _verdict(metric: str, unit: str, b_median: float, o_median: float, ratio: float | None,
             rng: tuple[float, float] | None, disjoint: bool, test: RankTest | None, n_o: int, n_b: int) -> str:
    """Names a direction only when every sign of one agrees: the test decides (p < alpha, which
    these run counts can reach), the p10-p90 intervals are disjoint (so the ratio range does not
    cross 1), and the ratio of medians and the Hodges-Lehmann shift point the same way."""
    overlap = "intervals disjoint" if disjoint else "intervals overlap"
    if test is None:
        return f"too few runs for a test (n = {n_o} vs {n_b}); {overlap}"
    smallest_p = 2 / math.comb(n_b + n_o, n_o)
    if smallest_p >= ALPHA:  # every ordering of so few runs gives p >= alpha: no evidence either way
        return (f"undecided: {n_o} vs {n_b} runs cannot reach p < {ALPHA:g} (smallest p {smallest_p:.2g}); "
                f"{overlap}")
    if test.p >= ALPHA:
        return f"indistinguishable (p = {test.p:.2g}; {overlap})"
    signs = {np.sign(o_median - b_median), np.sign(test.hl_shift)} | ({np.sign(ratio - 1)} if ratio is not None else set())
    if not disjoint:
        return f"undecided: p = {test.p:.2g} but the intervals overlap (the ratio range spans 1)"
    if len(signs) != 1 or 0 in signs:
        return (f"undecided: p = {test.p:.2g} but the ratio of medians and the Hodges-Lehmann shift do not point "
                f"the same way; {overlap}")
    size = _size(ratio, metric, rng) if ratio is not None and rng is not None else f"shift {test.hl_shift:+.4g} {unit}"
    return f"{size}; {overlap}; p = {test.p:.2g}"


def compare(metric: str, unit: str, baseline_id: str, baseline: Sequence[float], other_id: str,
            other: Sequence[float]) -> Comparison:
    """`other` against `baseline`, one value per ok run each."""
    b, o = across_runs(baseline), across_runs(other)
    positive = b.min > 0 and o.min > 0  # net energy can come out <= 0 on a noisy host: no ratio then
    ratio = o.median / b.median if positive else None
    rng = (o.p10 / b.p90, o.p90 / b.p10) if positive else None
    disjoint = o.p10 > b.p90 or o.p90 < b.p10
    test = rank_test(other, baseline) if min(len(baseline), len(other)) >= 2 else None
    verdict = _verdict(metric, unit, b.median, o.median, ratio, rng, disjoint, test, len(other), len(baseline))
    return Comparison(metric=metric, unit=unit, baseline=baseline_id, other=other_id, n_baseline=b.n, n_other=o.n,
                      baseline_median=b.median, other_median=o.median, ratio_of_medians=ratio, ratio_range=rng,
                      intervals_disjoint=disjoint, test=test, verdict=verdict)


METRICS = (("latency", "latency_ms_median", "ms"), ("energy", "energy_per_step_j", "J"))


def compare_runs(baseline_id: str, baseline_runs: list[RunRecord], other_id: str,
                 other_runs: list[RunRecord]) -> list[Comparison]:
    """Latency and (where both sides have it) energy per step, over each side's ok runs."""
    out = []
    for metric, key, unit in METRICS:
        b = [v for _, v in run_values([r for r in baseline_runs if r.status == "ok"], key)]
        o = [v for _, v in run_values([r for r in other_runs if r.status == "ok"], key)]
        if b and o:
            out.append(compare(metric, unit, baseline_id, b, other_id, o))
    return out
