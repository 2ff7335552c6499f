"""Verdicts on the seed's claims (Malcewicz et al. 2025) from a measured effect and its 95% interval.

Every claim is stated as "effect > null" (or "effect ≥ null" for an "at least" claim) in its
claimed direction, and judged by :func:`decide`:

* HELD — the interval lies wholly beyond the null in the claimed direction (``low > null``;
  ``low ≥ null`` for "at least") and, for a paired comparison, the Wilcoxon signed-rank p < 0.05;
* DID NOT HOLD — the interval excludes every effect in the claimed direction (``high ≤ null``;
  ``high < null`` for "at least") and, for a paired comparison, p < 0.05 unless every pair is
  identical (the interval is then exactly ``[0, 0]``);
* INCONCLUSIVE — otherwise, and whenever a compared group has fewer than :data:`MIN_UNITS` units;
* NOT MEASURED — the runs lack the data (or, for a gain, every base value already sits at 1.0).

The rank test guards the percentile bootstrap on few pairs: n same-sign pairs give an interval
that excludes 0 for any n (two give ``[d, d]``), while the two-sided test needs 6 to reach 5%.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...metrics.intervals import Estimate

HELD, NOT_HELD, INCONCLUSIVE, NOT_MEASURED = "HELD", "DID NOT HOLD", "INCONCLUSIVE", "NOT MEASURED"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE, NOT_MEASURED)
CONFIDENCE = 0.95
ALPHA = 0.05  # the paired rank test's level, matching the 95% interval
MIN_UNITS = 2  # a group of one value has a point bootstrap distribution: no interval to judge by


@dataclass
class Claim:
    """One claim of the seed, the quantity measured for it and the verdict.

    ``text``, ``verdict`` and ``evidence`` (every number in one line) come first, as ``gradleak
    report`` prints them; the numbers follow one by one for the HTML table and for tests.
    """

    text: str
    verdict: str
    evidence: str
    key: str = ""  # "1a", "2b", ...: the seed's claim number and the row
    quantity: str = ""
    effect: float | None = None
    low: float | None = None
    high: float | None = None
    n: int = 0  # units resampled, all groups together
    unit: str = ""  # what was resampled: images, runs, pairs
    p_value: float | None = None  # the paired test's (Wilcoxon signed-rank; exact binomial for hit/miss runs)
    threshold: str = ""  # the claimed direction, e.g. "> 0" or "≥ 2"
    details: str = ""
    sizes: tuple[int, ...] = ()  # units in each compared group
    ratio: bool = False  # the effect is a ratio (shown as 2.04×), not a difference

    def _num(self, x: float) -> str:
        return f"{x:.2f}×" if self.ratio else f"{x:+.3f}"

    @property
    def effect_text(self) -> str:
        return "—" if self.effect is None else self._num(self.effect)

    @property
    def ci_text(self) -> str:
        return "—" if self.low is None or self.high is None else f"[{self._num(self.low)}, {self._num(self.high)}]"

    @property
    def n_text(self) -> str:
        if not self.sizes:
            return "—"
        return f"{' vs '.join(str(s) for s in self.sizes)} {self.unit}".strip()

    @property
    def p_text(self) -> str:
        return "—" if self.p_value is None else f"{self.p_value:.3g}"


def decide(low: float, high: float, null: float = 0.0, at_least: bool = False, p_value: float | None = None,
           no_difference: bool = False) -> str:
    """The verdict for an interval ``[low, high]`` of an effect claimed to exceed ``null`` (module
    docstring). ``p_value``: the paired test's; ``no_difference``: every pair was identical, so the
    interval is exactly ``[0, 0]`` and needs no test to exclude a gain."""
    held = low >= null if at_least else low > null
    failed = high < null if at_least else high <= null
    if p_value is not None:
        held = held and p_value < ALPHA
        failed = failed and (p_value < ALPHA or no_difference)
    return HELD if held else NOT_HELD if failed else INCONCLUSIVE


def not_measured(key: str, text: str, quantity: str, why: str) -> Claim:
    return Claim(text, NOT_MEASURED, why.rstrip(".") + ".", key=key, quantity=quantity, details=why)


def measured(key: str, text: str, quantity: str, est: Estimate, unit: str, null: float = 0.0,
             at_least: bool = False, p_value: float | None = None, no_difference: bool = False,
             details: str = "", ratio: bool = False, test: str = "Wilcoxon") -> Claim:
    """A claim row from an :class:`Estimate`: its verdict by :func:`decide` and its evidence line."""
    few = min(est.n) < MIN_UNITS
    verdict = INCONCLUSIVE if few else decide(est.low, est.high, null, at_least, p_value, no_difference)
    threshold = f"{'≥' if at_least else '>'} {null:g}{'×' if ratio else ''}"
    claim = Claim(text, verdict, "", key=key, quantity=quantity, effect=est.value, low=est.low, high=est.high,
                  n=sum(est.n), unit=unit, p_value=p_value, threshold=threshold, sizes=est.n, ratio=ratio)
    notes = [f"fewer than {MIN_UNITS} {unit} in a group: no interval"] if few else []
    if not few and verdict == INCONCLUSIVE and p_value is not None and decide(est.low, est.high, null, at_least) != \
            INCONCLUSIVE:
        notes.append(f"the interval is one-sided but {test} p ≥ {ALPHA:g}"
                     + (f" ({sum(est.n)} {unit} can never reach it: the test needs 6)" if sum(est.n) < 6 else ""))
    claim.details = "; ".join(notes + ([details] if details else []))
    p = f", {test} p = {claim.p_text}" if p_value is not None else ""
    claim.evidence = (f"{quantity} = {claim.effect_text} (claimed {threshold}), {CONFIDENCE:.0%} CI {claim.ci_text}, "
                      f"n = {claim.n_text}{p}." + (f" {claim.details}." if claim.details else ""))
    return claim


__all__ = ["ALPHA", "CONFIDENCE", "HELD", "INCONCLUSIVE", "MIN_UNITS", "NOT_HELD", "NOT_MEASURED", "VERDICTS",
           "Claim", "decide", "measured", "not_measured"]
