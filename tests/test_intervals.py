"""Known answers for gradleak.metrics.intervals: mean, spread, standard error, bootstrap intervals
and paired differences."""

from __future__ import annotations

import math

import pytest

from gradleak.errors import ConfigError
from gradleak.metrics import bootstrap_interval, paired_difference, standard_error, stat
from gradleak.metrics.intervals import mean, std


def test_mean_std_and_standard_error_of_known_values():
    values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]  # mean 5, sum of squares 32, n 8
    assert mean(values) == pytest.approx(5.0)
    assert std(values) == pytest.approx(math.sqrt(32 / 7))
    assert standard_error(values) == pytest.approx(math.sqrt(32 / 7) / math.sqrt(8))
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)  # std √2 over √2
    assert std([3.0]) == standard_error([3.0]) == 0.0


def test_stat_skips_missing_values_and_formats_spread():
    s = stat([0.5, None, 0.7])
    assert (s.mean, s.n) == (pytest.approx(0.6), 2)
    assert s.std == pytest.approx(math.sqrt(0.02)) and s.se == pytest.approx(0.1)
    assert s.text() == "0.600 ± 0.141" and stat([0.25]).text(2) == "0.25"
    assert stat([None, None]) is None and stat([]) is None


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    values = [0.1 * i for i in range(20)]
    low, high = bootstrap_interval(values, resamples=2000, seed=3)
    assert low < mean(values) < high and 0.0 <= low and high <= 1.9
    assert bootstrap_interval(values, resamples=2000, seed=3) == (low, high)
    narrow = bootstrap_interval(values, confidence=0.5, resamples=2000, seed=3)
    assert low < narrow[0] < narrow[1] < high
    assert bootstrap_interval([0.4]) == (0.4, 0.4)


def test_bootstrap_interval_takes_any_statistic():
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    low, high = bootstrap_interval(values, statistic=lambda x: float(sorted(x)[len(x) // 2]), resamples=500)
    assert 1.0 <= low <= high <= 100.0


def test_clear_gain_excludes_zero():
    before = [0.40, 0.35, 0.50, 0.42, 0.38, 0.45, 0.41, 0.39]
    after = [b + 0.15 + 0.01 * (i % 3) for i, b in enumerate(before)]
    d = paired_difference(after, before)
    assert d.n == 8 and d.mean == pytest.approx(0.15 + 0.01 * (0 + 1 + 2 + 0 + 1 + 2 + 0 + 1) / 8)
    assert 0.0 < d.low <= d.mean <= d.high and d.excludes_zero()
    assert d.p_value < 0.01  # 8 of 8 positive: exact two-sided p = 2 / 2**8
    flipped = paired_difference(before, after)
    assert flipped.mean == pytest.approx(-d.mean) and flipped.high < 0.0


def test_identical_pairs_give_zero_difference_and_p_one():
    values = [0.3, 0.6, 0.9]
    d = paired_difference(values, values)
    assert (d.mean, d.n, d.p_value) == (0.0, 3, 1.0)
    assert d.low <= 0.0 <= d.high and not d.excludes_zero()


def test_bad_input_is_a_config_error():
    with pytest.raises(ConfigError):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ConfigError):
        bootstrap_interval([])
    with pytest.raises(ConfigError):
        bootstrap_interval([1.0, float("nan")])
    with pytest.raises(ConfigError):
        bootstrap_interval([1.0, 2.0], confidence=1.0)
