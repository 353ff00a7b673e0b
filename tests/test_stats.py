import pytest

from vnuma_sched.experiments import stats


def test_medians_and_ratio():
    assert stats.median([3, 1, 2]) == 2 and stats.ratio([2, 2, 2], [1, 1, 1]) == 0.5
    assert stats.ratio([0, 0], [1, 2]) is None


@pytest.mark.parametrize("a,b,u,p", [
    ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], 0, 2 / 252),      # exact: 2 of C(10,5)
    ([1, 2, 3], [4, 5, 6], 0, 2 / 20),
    ([1, 4, 5], [2, 3, 6], 4, 1.0),
])
def test_mann_whitney_exact(a, b, u, p):
    got_u, got_p = stats.mann_whitney(a, b)
    assert got_u == u and got_p == pytest.approx(p)


def test_mann_whitney_normal_with_ties():
    # reference: scipy.stats.mannwhitneyu(a, b, method="asymptotic") -> U=13, p=0.000670802
    a = [1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6]
    b = [4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10]
    u, p = stats.mann_whitney(a, b)
    assert u == 13 and p == pytest.approx(0.0006708022634894282, rel=1e-9)


def test_bootstrap_interval_contains_ratio_and_is_reproducible():
    a, b = [10, 11, 9, 10, 12], [5, 6, 5, 4, 6]
    lo, hi = stats.bootstrap_ratio_ci(a, b)
    assert lo <= stats.ratio(a, b) <= hi and hi < 1
    assert stats.bootstrap_ratio_ci(a, b) == (lo, hi)


def test_compare_flags_noise():
    doc = stats.compare([10, 12, 9, 11, 10], [11, 9, 10, 12, 10])
    assert doc["inconclusive"] and doc["n"] == [5, 5]
    # ties present: normal approximation; scipy gives U=25, p=0.0104178
    clear = stats.compare([10, 11, 10, 12, 11], [1, 2, 1, 2, 1])
    assert not clear["inconclusive"] and clear["p"] == pytest.approx(0.010417773157830204)
    assert clear["ratio"] == pytest.approx(1 / 11)


def test_iqr_inclusive_quartiles():
    assert stats.iqr([1, 2, 3, 4]) == 1.5 and stats.iqr([4, 14]) == 5.0
    assert stats.iqr([7]) is None and stats.iqr([]) is None


def test_spread_between_and_within_boots():
    s = stats.spread([[1, 2, 3], [11, 12, 13]])
    assert s["median"] == 7 and s["n"] == 6 and s["boot_medians"] == [2, 12]
    assert s["between_boots_iqr"] == 5.0 and s["within_boot_iqr"] == 1.0
    assert s["boots_dominate"] is True
    calm = stats.spread([[1, 5, 9], [4, 5, 6], [2, 5, 8]])
    assert calm["between_boots_iqr"] == 0 and calm["within_boot_iqr"] == 3.0
    assert calm["boots_dominate"] is False
    one = stats.spread([[3, 1], []])   # a boot without values does not count
    assert one["boot_medians"] == [2] and one["between_boots_iqr"] is None
    assert one["within_boot_iqr"] == 1.0 and one["boots_dominate"] is None
    single_runs = stats.spread([[1], [3], [8]])   # one run per boot: no spread within
    assert single_runs["within_boot_iqr"] is None and single_runs["between_boots_iqr"] == 3.5
