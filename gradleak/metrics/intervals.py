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


__all__ = [
    "PairedDifference", "Stat", "bootstrap_interval", "mean", "paired_difference", "standard_error", "stat", "std",
]
