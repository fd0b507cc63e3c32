import numpy as np
import pytest

from orchestrator.results.stats import across_runs, outliers, within_run


def test_within_run_hand_computed():
    # sorted: 10 11 12 13 100 -> median 12; numpy linear q25 = 11, q75 = 13
    w = within_run([12, 10, 100, 11, 13])
    assert (w.n, w.median, w.iqr, w.min) == (5, 12.0, 2.0, 10.0)
    assert w.mean == pytest.approx(29.2)


def test_across_runs_percentiles_follow_numpy_linear_interpolation():
    values = [10.0, 10.2, 9.9, 10.1, 7.4, 10.0, 10.3]
    s = across_runs(values)
    # sorted: 7.4 9.9 10.0 10.0 10.1 10.2 10.3; p10 at rank 0.6 -> 7.4 + 0.6 * 2.5 = 8.9
    assert s.median == 10.0
    assert s.p10 == pytest.approx(8.9)
    assert s.p90 == pytest.approx(10.24)  # rank 5.4 -> 10.2 + 0.4 * 0.1
    assert s.mad == pytest.approx(0.1)  # |dev|: 0 .2 .1 .1 2.6 0 .3 -> median 0.1
    assert (s.min, s.max) == (7.4, 10.3)


def test_one_low_run_among_seven_is_flagged_and_kept():
    values = [10.0, 10.2, 9.9, 10.1, 7.4, 10.0, 10.3]
    assert outliers(values) == [4]  # 2.6 > 3 * 1.4826 * 0.1
    assert across_runs(values).n == 7


def test_no_outliers_in_tight_data_and_too_few_runs():
    assert outliers([10.0, 10.1, 9.9, 10.05, 9.95]) == []
    assert outliers([1.0, 100.0]) == []


def test_zero_mad_flags_values_off_the_bulk():
    assert outliers([5.0, 5.0, 5.0, 5.0, 6.0]) == [4]


def test_empty_input_raises():
    with pytest.raises(ValueError):
        within_run([])
    with pytest.raises(ValueError):
        across_runs(np.array([]))
