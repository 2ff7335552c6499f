"""The seed's claims (Malcewicz et al. 2025), each a named quantity measured on the runs.

(1) leakage drops as the batch grows; (2) at B = 4 the attacker still names the classes at least
twice as well as random; (3) aggregating evidence improves naming; (4) oracle CLIP guidance
("image of a <class>") improves reconstruction; (5) the class is found by trying each as guidance
and keeping the lowest final loss. Label *recovery* (class indices from the gradient:
``label_accuracy``) and *naming* (class names from the labeller: ``semantic_accuracy``,
``search_accuracy``) are separate rows. Each row has an effect, a 95% percentile-bootstrap
interval over the unit it is about (images for per-image SSIM, runs otherwise), n, the Wilcoxon
p-value when paired, and a verdict by the rules of :mod:`.verdicts`. Claims 1-3 read the unguided
runs (see :func:`_plain`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from ...metrics.intervals import (
    Estimate,
    difference_interval,
    mean,
    mean_interval,
    paired_difference,
    ratio_interval,
)
from .runs import AGGREGATED_KEY, SEMANTIC_BASELINE_KEY, Run, guidance_points, unguided
from .verdicts import Claim, measured, not_measured

BATCHES_FIELD = "batches"  # config field: client batches whose naming evidence a run aggregates (R)
PREFIX_KEY = AGGREGATED_KEY + "_R"  # summary key + R: naming through the label map of the first R batches


def _plain(runs: Sequence[Run]) -> tuple[list[Run], str]:
    """Claims 1-3 read the unguided runs: oracle guidance hands the attacker the true class (it
    would inflate naming) and a search grid adds runs at one B only. With none, every run, said."""
    plain = unguided(runs)
    return (plain, "") if plain else (list(runs), "no unguided runs: every run counted, guided ones too")


def _finite_list(value) -> list[float] | None:
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value):
        return None
    return [float(x) for x in value]


def _mean_curve(groups: dict[int, list[float]], name: str = "B") -> str:
    return ", ".join(f"{name}={k}: {float(mean(v)):.3f}" for k, v in groups.items())


def _drop_with_batch(key: str, text: str, metric: str, runs: Sequence[Run],
                     values: Callable[[Run], list[float] | None], unit: str, note: str = "") -> Claim:
    """Mean of ``metric`` at the smallest B minus at the largest, claimed > 0 (a drop).

    The difference between the extreme batch sizes gives the drop in the metric's own units with an
    interval, like every other row; a rank trend (Spearman) would use every B but state no size, so
    the means at each B are listed beside it, with the steps where they rise.
    """
    groups: dict[int, list[float]] = {}
    for r in runs:
        v = values(r)
        if v:
            groups.setdefault(r.batch_size, []).extend(v)
    groups = dict(sorted(groups.items()))
    quantity = f"drop in mean {metric} from the smallest to the largest B"
    if len(groups) < 2:
        return not_measured(key, text, quantity, f"needs done runs with {metric} at two or more batch sizes")
    lo, hi = min(groups), max(groups)
    means = {b: float(mean(v)) for b, v in groups.items()}
    sizes = list(groups)
    rises = [f"B={a}→{b} (+{means[b] - means[a]:.3f})" for a, b in zip(sizes, sizes[1:])
             if round(means[b] - means[a], 3) > 0]
    details = "; ".join(filter(None, [f"{metric} by B: {_mean_curve(groups)}",
                                      f"not monotone: the mean rises {', '.join(rises)}" if rises else "", note]))
    est = difference_interval(groups[lo], groups[hi])
    return measured(key, text, f"mean {metric} at B={lo} − at B={hi}", est, unit, details=details)


def claim_ssim_drops(runs: Sequence[Run]) -> Claim:
    """1a. SSIM per image (``per_image_ssim``) when every run has it, else each run's mean SSIM."""
    text = "(1) Leakage drops as the batch grows: reconstruction SSIM."
    plain, note = _plain(runs)
    with_ssim = [r for r in plain if r.value("ssim") is not None]
    if with_ssim and all(_finite_list(r.metrics.get("per_image_ssim")) for r in with_ssim):
        return _drop_with_batch("1a", text, "SSIM", with_ssim, lambda r: _finite_list(r.metrics["per_image_ssim"]),
                                "images", note)
    return _drop_with_batch("1a", text, "SSIM", with_ssim, lambda r: [r.value("ssim")], "runs", note)


def claim_label_accuracy_drops(runs: Sequence[Run]) -> Claim:
    """1b. Label recovery from the gradient, per run (its accuracy is order-free, not per image)."""
    text = "(1) Leakage drops as the batch grows: label recovery (class indices from the gradient)."
    plain, note = _plain(runs)
    return _drop_with_batch("1b", text, "label accuracy", plain,
                            lambda r: None if r.value("label_accuracy") is None else [r.value("label_accuracy")],
                            "runs", note)


def _b4_versus_random(key: str, text: str, what: str, runs: Sequence[Run], accuracy: str,
                      baselines: Sequence[str], times: float) -> Claim:
    """Mean accuracy / mean random baseline over the B = 4 runs (resampled as pairs); ``times`` > 1
    is an "at least" claim (ratio ≥ times), 1 a "better than random" one (ratio > 1)."""
    quantity = f"{what} / random baseline at B = 4"
    plain, note = _plain(runs)
    at4 = [r for r in plain if r.batch_size == 4]
    if not at4:
        return not_measured(key, text, quantity, "no done runs at B = 4")
    pairs = []
    for r in at4:
        base = next((r.value(b) for b in baselines if r.value(b) is not None), None)
        if r.value(accuracy) is not None and base is not None and base > 0:
            pairs.append((r.value(accuracy), base))
    if not pairs:
        return not_measured(key, text, quantity, f"B = 4 runs lack {accuracy} or its random baseline")
    acc, base = [a for a, _ in pairs], [b for _, b in pairs]
    est = ratio_interval(acc, base)
    details = f"{what} {float(mean(acc)):.3f} vs random {float(mean(base)):.3f}: {est.value:.2f}× random" + (
        f"; {note}" if note else "")
    return measured(key, text, quantity, est, "runs", null=times, at_least=times > 1, details=details, ratio=True)


def claim_b4_labels_beat_random(runs: Sequence[Run]) -> Claim:
    return _b4_versus_random("2a", "(2) At B = 4, label recovery (class indices from the gradient) beats random.",
                             "label accuracy", runs, "label_accuracy", ("label_random_baseline",), 1.0)


def claim_b4_naming_twice_random(runs: Sequence[Run]) -> Claim:
    """2b, the seed's claim: naming (the labeller's class names); the label baseline stands in for
    the semantic one when a run lacks it (they agree when the vocabulary is the dataset's classes)."""
    return _b4_versus_random("2b", "(2) At B = 4, the attacker names the images' classes at least 2× as well as "
                             "random.", "naming accuracy", runs, "semantic_accuracy",
                             (SEMANTIC_BASELINE_KEY, "label_random_baseline"), 2.0)


def _paired_gain(key: str, text: str, quantity: str, pairs: Sequence[tuple[float, float]], unit: str,
                 names: tuple[str, str], ceiling: bool = True, note: str = "") -> Claim:
    """``better - base`` over ``(base, better)`` pairs, claimed > 0, with the Wilcoxon p-value.
    Not measured when every base already sits at 1.0: there is no room to improve."""
    base, better = [b for b, _ in pairs], [v for _, v in pairs]
    if ceiling and all(b >= 1.0 for b in base):
        return not_measured(key, text, quantity, f"{names[0]} is already 1.0 on all {len(base)} {unit}: "
                                                 "no room to improve")
    d = paired_difference(better, base)
    details = f"{names[1]} {float(mean(better)):.3f} vs {names[0]} {float(mean(base)):.3f}" + note
    return measured(key, text, quantity, Estimate(d.mean, d.low, d.high, (d.n,)), unit, p_value=d.p_value,
                    no_difference=base == better, details=details)


def claim_aggregation_helps(runs: Sequence[Run]) -> Claim:
    """3a. The run's aggregated naming (its evidence pooled over batches/restarts) against the
    labeller's single top-1 naming of the same reconstructions."""
    text = "(3) Aggregating evidence improves naming over the labeller's single guess."
    quantity = "aggregated − single naming accuracy, paired per run"
    plain, note = _plain(runs)
    pairs = [(r.value("semantic_accuracy"), r.value(AGGREGATED_KEY)) for r in plain]
    pairs = [(s, a) for s, a in pairs if s is not None and a is not None]
    if not pairs:
        return not_measured("3a", text, quantity,
                            "no run recorded both single and aggregated semantic accuracy")
    return _paired_gain("3a", text, quantity, pairs, "runs", ("single", "aggregated"),
                        note=f"; {note}" if note else "")


def _naming(run: Run) -> float | None:
    """A run's final naming accuracy: through the pooled label map when it made one, else top-1."""
    agg = run.value(AGGREGATED_KEY)
    return agg if agg is not None else run.value("semantic_accuracy")


def _naming_curve(run: Run) -> dict[int, float]:
    """R → naming accuracy of one run: over its first R batches (``semantic_accuracy_aggregated_R<r>``)
    and over all of them at R = its batch count (``semantic_batches``, else the ``batches`` option)."""
    curve = {}
    for k in run.metrics:
        suffix = k[len(PREFIX_KEY):]
        if k.startswith(PREFIX_KEY) and suffix.isdigit() and run.value(k) is not None:
            curve[int(suffix)] = run.value(k)
    total = run.metrics.get("semantic_batches") or run.config.get(BATCHES_FIELD)
    if isinstance(total, int) and not isinstance(total, bool) and _naming(run) is not None:
        curve[total] = _naming(run)
    return curve


def claim_more_batches_help(runs: Sequence[Run]) -> Claim:
    """3b. Naming accuracy per R over the unguided runs, and R_max − R = 1 (the smallest R when none
    has R = 1). A client's curve comes from one run's prefixes and from runs whose configs differ
    only in ``batches``; clients with both R are compared paired (Wilcoxon), else the two groups
    of runs as independent samples."""
    text = "(3) Aggregating evidence over several client batches (R) improves naming."
    quantity = "naming accuracy at R_max − at R = 1"
    plain, note = _plain(runs)
    clients: dict[str, dict[int, float]] = {}
    for r in sorted(plain, key=lambda r: -max(_naming_curve(r), default=0)):  # longest run's prefixes first
        twin = repr(sorted((k, repr(v)) for k, v in r.config.items() if k != BATCHES_FIELD))
        for k, v in _naming_curve(r).items():
            clients.setdefault(twin, {}).setdefault(k, v)
    sizes = sorted({k for c in clients.values() for k in c})
    if not sizes:
        return not_measured("3b", text, quantity, f"no unguided run has a '{BATCHES_FIELD}' option (R) or "
                                                  f"per-R naming accuracies ({PREFIX_KEY}<R>)")
    if len(sizes) < 2:
        return not_measured("3b", text, quantity, f"every run used R = {sizes[0]}")
    lo, hi = (1 if 1 in sizes else sizes[0]), sizes[-1]
    quantity = f"naming accuracy at R={hi} − at R={lo}"
    both = [c for c in clients.values() if lo in c and hi in c]
    curves = both or list(clients.values())
    per_r = []
    for k in sizes:
        values = [c[k] for c in curves if k in c]
        if values:
            est = mean_interval(values)
            per_r.append(f"R={k}: {est.value:.3f} [{est.low:.3f}, {est.high:.3f}] (n={len(values)})")
    extra = "; ".join(filter(None, [f"naming accuracy per R (95% CI, n): {', '.join(per_r)}", note]))
    if both:
        return _paired_gain("3b", text, quantity, [(c[lo], c[hi]) for c in both], "clients", (f"R={lo}", f"R={hi}"),
                            False, "; " + extra)
    est = difference_interval([c[hi] for c in curves if hi in c], [c[lo] for c in curves if lo in c])
    return measured("3b", text, quantity, est, "runs",
                    details=f"unpaired (no client has both R={lo} and R={hi}); {extra}")


def claim_oracle_guidance_helps(runs: Sequence[Run]) -> Claim:
    """4. Pairs oracle with none on the same client batch: one run with both SSIMs recorded, or runs
    whose configs differ only in guidance settings (every field named guid*)."""
    text = "(4) Oracle CLIP guidance (\"image of a <class>\") improves reconstruction SSIM over no guidance."
    quantity = "SSIM with oracle guidance − without, paired per client batch"
    paired: dict[str, dict[str, float]] = {}
    for mode, r, v in guidance_points(runs):
        key = repr(sorted((k, repr(x)) for k, x in r.config.items() if "guid" not in k))
        paired.setdefault(key, {})[mode] = v
    pairs = [(d["none"], d["oracle"]) for d in paired.values() if "none" in d and "oracle" in d]
    if not pairs:
        return not_measured("4", text, quantity, "no runs compared oracle guidance with no guidance")
    return _paired_gain("4", text, quantity, pairs, "pairs", ("no guidance", "oracle"))


def claim_search_beats_random(runs: Sequence[Run]) -> Claim:
    text = "(5) Trying each class as guidance and keeping the lowest final loss names the classes better than random."
    quantity = "search accuracy − random baseline, paired per run"
    pairs = [(r.value("search_random_baseline"), r.value("search_accuracy")) for r in runs]
    pairs = [(b, a) for b, a in pairs if b is not None and a is not None]
    if not pairs:
        return not_measured("5", text, quantity, "no run recorded search accuracy and its random baseline")
    base, hits = {b for b, _ in pairs}, [a for _, a in pairs]
    if len(base) == 1 and set(hits) <= {0.0, 1.0}:
        return _hits_against_chance(text, hits, base.pop())
    return _paired_gain("5", text, quantity, pairs, "runs", ("random", "search accuracy"), ceiling=False)


def _hits_against_chance(text: str, hits: list[float], chance: float) -> Claim:
    """B = 1 search: each run names its one image or not, against a fixed chance rate. The signed-rank
    test suits continuous gains, not hit/miss against a constant; the exact one-sided binomial test and
    the Clopper–Pearson interval are the textbook answer (Clopper & Pearson 1934)."""
    from scipy.stats import binomtest

    k, n = int(sum(hits)), len(hits)
    test = binomtest(k, n, chance, alternative="greater")
    ci = binomtest(k, n, chance).proportion_ci(confidence_level=0.95, method="exact")  # two-sided, as elsewhere
    est = Estimate(k / n - chance, ci.low - chance, ci.high - chance, (n,))
    return measured("5", text, "search accuracy − random baseline (hit or miss per image)", est, "runs",
                    p_value=float(test.pvalue), test="binomial",
                    details=f"{k} of {n} images named, random {chance:.3f}")


CLAIMS: tuple[Callable[[Sequence[Run]], Claim], ...] = (
    claim_ssim_drops, claim_label_accuracy_drops, claim_b4_labels_beat_random, claim_b4_naming_twice_random,
    claim_aggregation_helps, claim_more_batches_help, claim_oracle_guidance_helps, claim_search_beats_random)


def undefended(runs: Sequence[Run]) -> list[Run]:
    """The runs whose client applied no defence: the seed's claims are about an undefended client
    (a defence sweep's defended runs are judged in "Where attacks stop" instead)."""
    return [r for r in runs if not r.config.get("defense")]


def evaluate_claims(runs: Sequence[Run]) -> list[Claim]:
    """Every row of :data:`CLAIMS`, in order, over the undefended runs."""
    runs = undefended(runs)
    return [check(runs) for check in CLAIMS]
