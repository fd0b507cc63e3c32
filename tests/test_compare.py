"""Comparison statistics against values computed by hand (in the comments)."""

import itertools
import math
import re
import shutil

import pytest
from conftest import REPO, cli

from orchestrator.report.compare_sessions import compare_sides, parse_side
from orchestrator.results.compare import _u_counts, _w_counts, compare, rank_test, signed_rank_test

BASE = [100.0, 101.0, 102.0, 103.0, 104.0]


def test_null_distribution_matches_enumeration():
    # m = n = 5: the coefficients of the Gaussian binomial [10 choose 5]_q, 252 orderings in all
    counts = _u_counts(5, 5)
    assert counts[:13] == (1, 1, 2, 3, 5, 7, 9, 11, 14, 16, 18, 19, 20) and sum(counts) == 252
    brute = [0] * 13  # m = 3, n = 4 by enumerating which ranks `other` takes
    for ranks in itertools.combinations(range(7), 3):
        brute[sum(r - i for i, r in enumerate(ranks))] += 1
    assert list(_u_counts(3, 4)) == brute


def test_signed_rank_null_distribution_matches_enumeration():
    for n in range(1, 9):
        brute = [0] * (n * (n + 1) // 2 + 1)
        for signs in itertools.product((0, 1), repeat=n):
            brute[sum(r for r, s in zip(range(1, n + 1), signs) if s)] += 1
        assert list(_w_counts(n)) == brute


def test_signed_rank_test_by_hand():
    # ranks of |d| 1..5, positive ones 1, 3, 4, 5: W = 13 of 15; P(W <= 2) = 3/32 ({}, {1}, {2}), p = 6/32.
    # The 15 Walsh averages sorted: -2, -0.5, 0.5, 1, 1, 1.5, 2, 2.5, 3, 3, 3.5, 4, 4, 4.5, 5: median 2.5.
    # P(W <= 0) = 1/32 > 0.025: the interval is the whole range, at 1 - 2/32.
    t = signed_rank_test([1.0, -2.0, 3.0, 4.0, 5.0])
    assert (t.w, t.n, t.method) == (13.0, 5, "exact")
    assert t.p == pytest.approx(6 / 32) and t.hl_shift == 2.5
    assert t.hl_ci == (-2.0, 5.0) and t.hl_ci_level == pytest.approx(1 - 2 / 32)


def test_signed_rank_drops_zeros_and_midranks_ties():
    # non-zero 1, 1, -2: ranks 1.5, 1.5, 3, W = 3 = n(n+1)/4, so p = 1; sigma^2 = 3*4*7/24 - (2^3-2)/48
    t = signed_rank_test([0.0, 1.0, 1.0, -2.0])
    assert (t.w, t.n, t.method, t.p) == (3.0, 3, "normal approximation (tie-corrected)", 1.0)


def test_pairs_that_share_a_drift_are_told_apart_only_by_the_paired_test():
    # each round 4.3-5.7% slower on the `other` side, the rounds themselves 10-80 apart: all 8
    # differences positive, exact p = 2 / 2^8, the Walsh averages' median the middle ratio, 1.05;
    # as two independent samples the drift hides it
    base = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    other = [b * (1.043 + 0.002 * i) for i, b in enumerate(base)]
    paired = signed_rank_test([math.log(o / b) for o, b in zip(other, base)])
    assert paired.p == pytest.approx(2 / 256) and math.exp(paired.hl_shift) == pytest.approx(1.05, abs=1e-4)
    assert rank_test([math.log(o) for o in other], [math.log(b) for b in base]).p > 0.5


def test_disjoint_intervals():
    other = [105.0, 106.0, 107.0, 108.0, 109.0]
    c = compare("latency", "ms", "base", BASE, "other", other)
    assert c.ratio_of_medians == pytest.approx(107 / 102)
    # p10, p90 (linear interpolation): base 100.4, 103.6; other 105.4, 108.6
    assert c.ratio_range == pytest.approx((105.4 / 103.6, 108.6 / 100.4))
    assert c.intervals_disjoint
    t = c.test
    assert t.method == "exact" and t.u == 25  # every other run slower than every base run
    assert t.p == pytest.approx(2 / 252)  # two-sided: 2 P(U >= 25) = 2 / C(10, 5)
    # differences other_i - base_j are 1..9 with counts 1,2,3,4,5,4,3,2,1: median 5;
    # P(U <= 2) = 4/252 <= 0.025 < P(U <= 3) = 7/252, so [D(3), D(23)] = [2, 8] at 1 - 8/252
    assert t.hl_shift == 5.0 and t.hl_ci == (2.0, 8.0)
    assert t.hl_ci_level == pytest.approx(1 - 8 / 252)
    assert c.verdict == "4.9% slower; intervals disjoint; p = 0.0079"


def test_overlapping_intervals_are_indistinguishable():
    base, other = [1.0, 2.0, 3.0, 4.0, 5.0], [1.5, 2.5, 3.5, 4.5, 5.5]
    c = compare("energy", "J", "base", base, "other", other)
    assert c.ratio_of_medians == pytest.approx(3.5 / 3)
    assert c.ratio_range == pytest.approx((1.9 / 4.6, 5.1 / 1.4))
    assert not c.intervals_disjoint
    t = c.test
    assert t.u == 15  # 1 + 2 + 3 + 4 + 5 pairs where other > base
    assert t.p == pytest.approx(2 * 87 / 252)  # 2 P(U <= 10), 87 = 1+1+2+3+5+7+9+11+14+16+18
    # differences 0.5 + (i - j): median 0.5, [D(3), D(23)] = [-2.5, 3.5], which holds 0
    assert t.hl_shift == 0.5 and t.hl_ci == (-2.5, 3.5)
    assert c.verdict == "indistinguishable (p = 0.69; intervals overlap)"


def test_ties_use_the_tie_corrected_normal_approximation():
    t = rank_test([1.0, 2.0, 2.0, 3.0], [2.0, 3.0, 3.0, 4.0])
    assert t.method.startswith("normal") and t.u == 3  # 0 + 0.5 + 0.5 + 2
    # sigma^2 = 16/12 * (9 - (24 + 24) / 56); z = (|3 - 8| - 0.5) / sigma
    z = 4.5 / math.sqrt(16 / 12 * (9 - 48 / 56))
    assert t.p == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert t.p == pytest.approx(0.17203, abs=1e-5)
    assert t.hl_shift == -1.0


def test_large_factor_verdict_uses_the_ratio_range():
    gpu = [9.6, 9.8, 9.9, 10.0, 10.1, 10.2, 10.4]
    ane = [1.55, 1.57, 1.58, 1.59, 1.6, 1.61, 1.62]
    c = compare("energy", "J", "gpu", gpu, "ane", ane)
    lo, hi = c.ratio_range  # ane's p10-p90 over gpu's: [1.562 / 10.28, 1.614 / 9.72]
    assert (lo, hi) == pytest.approx((1.562 / 10.28, 1.614 / 9.72))
    assert c.verdict.startswith(f"{10 / 1.59:.2f}x ({1 / hi:.2f}-{1 / lo:.2f}x) lower energy; intervals disjoint; p = ")
    assert c.test.p == pytest.approx(2 / math.comb(14, 7))


def test_too_few_runs_and_non_positive_energy():
    c = compare("latency", "ms", "a", [1.0], "b", [2.0, 3.0])
    assert c.test is None and c.verdict.startswith("too few runs for a test (n = 2 vs 1)")
    c = compare("energy", "J", "a", [-0.1, 0.2, 0.3, 0.25], "b", [5.0, 6.0, 7.0, 8.0])
    assert c.ratio_of_medians is None and c.ratio_range is None  # no ratio across zero
    assert c.verdict == f"shift +{c.test.hl_shift:.4g} J; intervals disjoint; p = 0.029"  # 2 / C(8, 4)


def test_too_few_runs_to_decide_is_not_called_indistinguishable():
    c = compare("latency", "ms", "a", [1.0, 2.0, 3.0], "b", [4.0, 5.0, 6.0])
    assert c.test.p == pytest.approx(0.1)  # the smallest p 3 vs 3 runs can give: 2 / C(6, 3)
    assert c.verdict == "undecided: 3 vs 3 runs cannot reach p < 0.05 (smallest p 0.1); intervals disjoint"


VERDICTS = {  # tests/fixtures/verdict-session: (baseline, cell) -> the verdict its runs call for
    ("base", "overlapping"): "indistinguishable (p = 0.71; intervals overlap)",
    ("base", "disjoint"): "18.9% slower; intervals disjoint; p = 0.00058",
    ("base", "crossing"): "undecided: p = 0.015 but the intervals overlap (the ratio range spans 1)",
    ("base", "zero-spread"): "41.5% slower; intervals disjoint; p = 0.0011",
    ("base", "two-runs"): "undecided: 2 vs 7 runs cannot reach p < 0.05 (smallest p 0.056); intervals disjoint",
    ("base", "one-run"): "too few runs for a test (n = 1 vs 7); intervals disjoint",
    ("base-3", "spread-3"): "undecided: 3 vs 3 runs cannot reach p < 0.05 (smallest p 0.1); intervals overlap",
}
DIRECTION = re.compile(r"(slower|faster|more energy|less energy|lower energy)")


@pytest.fixture
def verdicts(tmp_path):
    return shutil.copytree(REPO / "tests" / "fixtures" / "verdict-session", tmp_path / "20260103T000000Z-verdicts")


def test_verdicts_of_sessions_with_known_outcomes_name_one_direction_or_none(verdicts):
    for (base, cell), verdict in VERDICTS.items():
        (c,) = compare_sides(parse_side(f"{verdicts}:{base}"), parse_side(f"{verdicts}:{cell}"))
        assert c.verdict == verdict, (base, cell)
        named = DIRECTION.findall(c.verdict)
        if named:  # the ratio, its range, the shift and the word all agree
            up = named[0] in ("slower", "more energy")
            assert len(named) == 1 and c.test is not None and c.ratio_range is not None
            assert (c.ratio_of_medians > 1) == up and (c.test.hl_shift > 0) == up
            assert (min(c.ratio_range) > 1) if up else (max(c.ratio_range) < 1)
        else:
            assert c.verdict.startswith(("indistinguishable", "undecided", "too few runs"))


def test_the_compare_command_prints_the_known_verdicts(verdicts):
    p = cli("compare", f"{verdicts}:base", f"{verdicts}:crossing")
    assert p.returncode == 0, p.stderr
    assert f"latency: crossing vs base: {VERDICTS['base', 'crossing']}" in p.stdout
    assert "faster" not in p.stdout and "slower" not in p.stdout
