"""Summary statistics over repeated measurements (seeds, runs, pairs) and their uncertainty.

The one home for mean / standard deviation / standard error and bootstrap intervals in gradleak:
the sweep report and its claims read their numbers from here.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import stats as _scipy_stats

from ..errors import ConfigError


def _finite(values: Iterable[float], name: str) -> np.ndarray:
    """A non-empty 1-D float array of ``values``; raise on NaN / inf, which no interval survives."""
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(f"{name}: needs a non-empty sequence of numbers")
    if not np.isfinite(array).all():
        raise ConfigError(f"{name}: values must be finite")
    return array


def mean(values: Sequence[float] | np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Arithmetic mean; ``axis`` lets scipy's bootstrap evaluate many resamples at once."""
    return np.mean(np.asarray(values, dtype=float), axis=axis)


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1); 0 for a single value."""
    array = _finite(values, "std")
    return float(np.std(array, ddof=1)) if array.size > 1 else 0.0


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean, ``std / √n``; 0 for a single value."""
    return std(values) / math.sqrt(len(values))


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of ``n`` values (``std`` is 0 when ``n == 1``)."""

    mean: float
    std: float
    n: int

    @property
    def se(self) -> float:
        """Standard error of the mean."""
        return self.std / math.sqrt(self.n)

    def text(self, digits: int = 3) -> str:
        """``mean ± std``, or the mean alone for one value."""
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"


def stat(values: Iterable[float | None]) -> Stat | None:
    """:class:`Stat` of the values that are not ``None``; ``None`` when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Stat(float(mean(present)), std(present), len(present))


# scipy 1.15 renamed bootstrap's ``random_state`` to ``rng``; pass the generator under whichever it takes.
_RNG_KEYWORD = "rng" if "rng" in inspect.signature(_scipy_stats.bootstrap).parameters else "random_state"


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[..., float] = mean,
    confidence: float = 0.95,
    resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of ``statistic`` over ``values``.

    Seeded, so a report built twice states the same interval. One value gives ``(v, v)``: every
    resample of it is the same. ``statistic`` may take an ``axis`` keyword to be vectorised.
    """
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"bootstrap_interval: confidence must be in (0, 1), got {confidence}")
    array = _finite(values, "bootstrap_interval")
    if array.size == 1:  # scipy refuses one observation; its bootstrap distribution is a point
        value = float(statistic(array))
        return value, value
    result = _scipy_stats.bootstrap(
        (array,), statistic, n_resamples=resamples, confidence_level=confidence, method="percentile",
        **{_RNG_KEYWORD: np.random.default_rng(seed)},
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over ``n`` pairs, its bootstrap interval, and the Wilcoxon signed-rank p-value."""

    mean: float
    low: float
    high: float
    n: int
    p_value: float

    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0."""
        return self.low > 0.0 or self.high < 0.0


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 9999, seed: int = 0
) -> PairedDifference:
    """Compare paired measurements (e.g. with and without aggregation on the same runs): ``a - b``."""
    first, second = _finite(a, "paired_difference"), _finite(b, "paired_difference")
    if first.shape != second.shape:
        raise ConfigError(f"paired_difference: {first.size} vs {second.size} values; pairs need equal lengths")
    diff = first - second
    low, high = bootstrap_interval(diff, mean, confidence, resamples, seed)
    # Wilcoxon drops zero differences; with none left there is no evidence of a difference (and
    # scipy either raises or divides by zero, depending on the version).
    p_value = 1.0 if not diff.any() else float(_scipy_stats.wilcoxon(diff).pvalue)
    return PairedDifference(float(mean(diff)), low, high, int(diff.size), p_value)


@dataclass(frozen=True)
class Estimate:
    """A statistic, its bootstrap interval ``(low, high)`` and the size of each sample it rests on."""

    value: float
    low: float
    high: float
    n: tuple[int, ...]


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable[..., float], paired: bool, confidence: float,
               resamples: int, seed: int) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"bootstrap: confidence must be in (0, 1), got {confidence}")
    result = _scipy_stats.bootstrap(
        samples, statistic, paired=paired, n_resamples=resamples, confidence_level=confidence,
        method="percentile", **{_RNG_KEYWORD: np.random.default_rng(seed)},
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 9999,
                  seed: int = 0) -> Estimate:
    """The mean of ``values`` with its percentile bootstrap interval (see :func:`bootstrap_interval`)."""
    array = _finite(values, "mean_interval")
    low, high = bootstrap_interval(array, mean, confidence, resamples, seed)
    return Estimate(float(mean(array)), low, high, (int(array.size),))


def difference_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 9999,
                        seed: int = 0) -> Estimate:
    """``mean(a) - mean(b)`` of two independent samples, each resampled on its own (percentile
    bootstrap). A one-value sample has a point bootstrap distribution: it enters as a constant."""
    first, second = _finite(a, "difference_interval"), _finite(b, "difference_interval")
    value = float(mean(first) - mean(second))
    if first.size == 1 and second.size == 1:
        low = high = value
    elif first.size == 1:
        lo, hi = bootstrap_interval(second, mean, confidence, resamples, seed)
        low, high = float(first[0]) - hi, float(first[0]) - lo
    elif second.size == 1:
        lo, hi = bootstrap_interval(first, mean, confidence, resamples, seed)
        low, high = lo - float(second[0]), hi - float(second[0])
    else:
        low, high = _bootstrap((first, second), lambda x, y, axis=-1: mean(x, axis) - mean(y, axis), False,
                               confidence, resamples, seed)
    return Estimate(value, low, high, (int(first.size), int(second.size)))


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95,
                   resamples: int = 9999, seed: int = 0) -> Estimate:
    """``mean(numerator) / mean(denominator)`` over paired observations (e.g. a run's accuracy and
    its random baseline), the pairs resampled together; the denominators must be positive."""
    num, den = _finite(numerator, "ratio_interval"), _finite(denominator, "ratio_interval")
    if num.shape != den.shape:
        raise ConfigError(f"ratio_interval: {num.size} vs {den.size} values; pairs need equal lengths")
    if not (den > 0).all():
        raise ConfigError("ratio_interval: denominators must be positive")
    value = float(mean(num) / mean(den))
    if num.size == 1:
        return Estimate(value, value, value, (1,))
    low, high = _bootstrap((num, den), lambda x, y, axis=-1: mean(x, axis) / mean(y, axis), True,
                           confidence, resamples, seed)
    return Estimate(value, low, high, (int(num.size),))


__all__ = [
    "Estimate", "PairedDifference", "Stat", "bootstrap_interval", "difference_interval", "mean", "mean_interval",
    "paired_difference", "ratio_interval", "standard_error", "stat", "std",
]
