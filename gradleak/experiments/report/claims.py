"""The seed's four claims (Malcewicz et al. 2025), each checked on the runs with a verdict and
the numbers it rests on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ...metrics.intervals import Stat, stat
from .runs import AGGREGATED_KEY, SEMANTIC_BASELINE_KEY, Run, by_batch, guidance_points

HELD, NOT_HELD, NOT_MEASURED = "HELD", "DID NOT HOLD", "NOT MEASURED"
MIN_EFFECT = 0.01  # differences of mean SSIM / accuracy below this count as "no change" in the claims


@dataclass
class Claim:
    """One claim of the seed, what was measured, and whether it held."""

    text: str
    verdict: str
    evidence: str


def _fmt_curve(stats: dict[int, Stat]) -> str:
    return ", ".join(f"B={b}: {s.mean:.3f}" for b, s in stats.items())


def _rises(stats: dict[int, Stat]) -> list[str]:
    """The steps B → B' (consecutive batch sizes) where the mean rises by more than MIN_EFFECT."""
    sizes = list(stats)
    return [f"B={a}→{b}" for a, b in zip(sizes, sizes[1:]) if stats[b].mean > stats[a].mean + MIN_EFFECT]


def claim_leakage_drops(runs: Sequence[Run]) -> Claim:
    text = "Leakage drops as the batch size grows."
    ssim = by_batch(runs, lambda r: r.value("ssim"))
    labels = by_batch(runs, lambda r: r.value("label_accuracy"))
    if len(ssim) < 2 or len(labels) < 2:
        return Claim(text, NOT_MEASURED, "needs done runs at two or more batch sizes")
    lo, hi = min(ssim), max(ssim)
    # A change smaller than MIN_EFFECT is noise (1.0000 vs 0.9999 is no drop).
    ssim_drops = ssim[hi].mean < ssim[lo].mean - MIN_EFFECT
    # Label accuracy can sit at 1.0 at every B (exact analytic recovery): not rising counts.
    labels_not_up = labels[max(labels)].mean <= labels[min(labels)].mean + MIN_EFFECT
    rises = _rises(ssim)
    evidence = (f"SSIM {_fmt_curve(ssim)} ({'drops' if ssim_drops else 'does not drop'} from B={lo} to B={hi} "
                f"by more than {MIN_EFFECT}" + (f"; not monotone: it rises {', '.join(rises)}" if rises else "")
                + f"); label accuracy {_fmt_curve(labels)} ({'does not rise' if labels_not_up else 'rises'}).")
    return Claim(text, HELD if ssim_drops and labels_not_up else NOT_HELD, evidence)


def claim_b4_beats_random(runs: Sequence[Run]) -> Claim:
    text = "At batch size 4, label recovery is still about 2× better than random."
    at4 = [r for r in runs if r.batch_size == 4]
    if not at4:
        return Claim(text, NOT_MEASURED, "no done runs at B = 4")
    semantic = stat(r.value("semantic_accuracy") for r in at4)
    if semantic is not None:
        what, acc = "semantic accuracy", semantic
        base = stat(r.value(SEMANTIC_BASELINE_KEY) or r.value("label_random_baseline") for r in at4)
    else:
        what, acc = "label accuracy", stat(r.value("label_accuracy") for r in at4)
        base = stat(r.value("label_random_baseline") for r in at4)
    if acc is None or base is None or base.mean <= 0:
        return Claim(text, NOT_MEASURED, "B = 4 runs lack label accuracy or its random baseline")
    ratio = acc.mean / base.mean
    evidence = (f"{what} {acc.text()} vs random {base.mean:.3f} at B = 4 over {acc.n} run(s): "
                f"{ratio:.2f}× random (needs ≥ 2×).")
    return Claim(text, HELD if ratio >= 2.0 else NOT_HELD, evidence)


def _paired_improvement(text: str, pairs, better: str, base: str, unit: str, base_ceiling: str) -> Claim:
    """HELD when the second value of the ``(base, better)`` pairs beats the first by more than
    MIN_EFFECT on average; not measured when the base already sits at the ceiling."""
    base_stat, better_stat = stat(b for b, _ in pairs), stat(v for _, v in pairs)
    evidence = f"{better} {better_stat.text()} vs {base} {base_stat.text()} over {len(pairs)} {unit}."
    if base_stat.mean >= 1.0 - MIN_EFFECT:
        return Claim(text, NOT_MEASURED, evidence + f" {base_ceiling} is already at the ceiling.")
    return Claim(text, HELD if better_stat.mean > base_stat.mean + MIN_EFFECT else NOT_HELD, evidence)


def claim_aggregation_helps(runs: Sequence[Run]) -> Claim:
    text = "Aggregating label evidence (over restarts/rounds) improves label recovery."
    pairs = [(r.value("semantic_accuracy"), r.value(AGGREGATED_KEY)) for r in runs]
    pairs = [(s, a) for s, a in pairs if s is not None and a is not None]
    if not pairs:
        return Claim(text, NOT_MEASURED, "no run recorded both single-round and aggregated semantic accuracy")
    return _paired_improvement(text, pairs, "aggregated", "single", "run(s)", "Single-round accuracy")


def claim_oracle_guidance_helps(runs: Sequence[Run]) -> Claim:
    text = "Oracle guidance improves reconstruction quality (SSIM) over no guidance."
    points = guidance_points(runs)
    # Pair oracle with none on the same client batch: the same run (both SSIMs recorded) or runs
    # whose configs differ only in guidance settings (mode, weight, guide: every field named guid*).
    paired: dict[str, dict[str, float]] = {}
    for mode, r, v in points:
        key = repr(sorted((k, repr(x)) for k, x in r.config.items() if "guid" not in k))
        paired.setdefault(key, {})[mode] = v
    pairs = [(d["none"], d["oracle"]) for d in paired.values() if "none" in d and "oracle" in d]
    if not pairs:
        return Claim(text, NOT_MEASURED, "no runs compared oracle guidance with no guidance")
    return _paired_improvement(text, pairs, "SSIM with oracle guidance", "none", "pair(s)", "SSIM without guidance")


CLAIMS: tuple[Callable[[Sequence[Run]], Claim], ...] = (
    claim_leakage_drops, claim_b4_beats_random, claim_aggregation_helps, claim_oracle_guidance_helps)


def evaluate_claims(runs: Sequence[Run]) -> list[Claim]:
    """Every claim in :data:`CLAIMS`, in order."""
    return [check(runs) for check in CLAIMS]
