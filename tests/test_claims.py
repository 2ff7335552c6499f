"""Known answers for the report's claims (Malcewicz et al. 2025): verdicts from effect, 95% bootstrap
interval and, for paired comparisons, the Wilcoxon p-value, on synthetic runs with known numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradleak.experiments.report import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    NOT_MEASURED,
    Run,
    claim_aggregation_helps,
    claim_b4_labels_beat_random,
    claim_b4_naming_twice_random,
    claim_label_accuracy_drops,
    claim_more_batches_help,
    claim_oracle_guidance_helps,
    claim_search_beats_random,
    decide,
    evaluate_claims,
)
from gradleak.metrics.intervals import difference_interval, mean_interval, ratio_interval


def run(i: int, batch_size: int = 2, config: dict | None = None, **metrics) -> Run:
    return Run(f"r{i}", {"batch_size": batch_size, "seed": i, **(config or {})}, metrics, Path("."))


def noise(n: int, sd: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sd, n)


def symmetric(n: int, sd: float, seed: int = 0) -> np.ndarray:
    """Noise with mean exactly 0 (each draw and its negative)."""
    half = noise(n // 2, sd, seed)
    return np.concatenate([half, -half])


def guidance_runs(none: np.ndarray, oracle: np.ndarray) -> list[Run]:
    """Runs that each recorded SSIM with oracle guidance and without (the same client batch)."""
    return [run(i, config={"guidance": "oracle"}, ssim=float(o), ssim_no_guidance=float(b), guidance_mode="oracle")
            for i, (b, o) in enumerate(zip(none, oracle))]


def aggregation_runs(single: np.ndarray, aggregated: np.ndarray) -> list[Run]:
    return [run(i, semantic_accuracy=float(s), semantic_accuracy_aggregated=float(a))
            for i, (s, a) in enumerate(zip(single, aggregated))]


# -- the rules ----------------------------------------------------------------------------------------


def test_decide_states_the_rules_exactly():
    assert decide(0.01, 0.2) == HELD and decide(0.0, 0.2) == INCONCLUSIVE  # low must exceed the null
    assert decide(-0.2, 0.0) == NOT_HELD and decide(-0.2, 0.01) == INCONCLUSIVE
    # "At least 2×": an interval starting at 2 holds; one ending at 2 does not fail.
    assert decide(2.0, 2.5, null=2.0, at_least=True) == HELD
    assert decide(1.5, 2.0, null=2.0, at_least=True) == INCONCLUSIVE
    assert decide(1.5, 1.99, null=2.0, at_least=True) == NOT_HELD
    # Paired: the rank test must agree, except that identical pairs need no test to show no gain.
    assert decide(0.1, 0.2, p_value=0.5) == INCONCLUSIVE and decide(0.1, 0.2, p_value=0.01) == HELD
    assert decide(-0.2, -0.1, p_value=0.5) == INCONCLUSIVE and decide(-0.2, -0.1, p_value=0.01) == NOT_HELD
    assert decide(0.0, 0.0, p_value=1.0, no_difference=True) == NOT_HELD


# -- paired comparisons (aggregation, oracle guidance) ------------------------------------------------


@pytest.mark.parametrize("check, make", [(claim_oracle_guidance_helps, guidance_runs),
                                         (claim_aggregation_helps, aggregation_runs)])
def test_no_gain_is_never_held(check, make):
    base = 0.4 + noise(30, 0.05, seed=1)
    identical = check(make(base, base))
    assert identical.verdict == NOT_HELD  # the interval is [0, 0]: it excludes every gain
    assert (identical.effect, identical.low, identical.high, identical.p_value) == (0.0, 0.0, 0.0, 1.0)
    jitter = check(make(base, base + symmetric(30, 0.05, seed=2)))
    assert jitter.effect == pytest.approx(0.0, abs=1e-12)
    assert jitter.verdict == INCONCLUSIVE and jitter.low < 0.0 < jitter.high and jitter.p_value > 0.05


@pytest.mark.parametrize("check, make", [(claim_oracle_guidance_helps, guidance_runs),
                                         (claim_aggregation_helps, aggregation_runs)])
def test_clear_gain_holds_and_clear_loss_does_not(check, make):
    base = 0.4 + noise(30, 0.05, seed=3)
    gain = check(make(base, base + 0.2 + noise(30, 0.02, seed=4)))
    assert gain.verdict == HELD and 0.0 < gain.low < gain.effect < gain.high and gain.p_value < 1e-6
    assert gain.effect == pytest.approx(0.2, abs=0.02) and gain.n == 30
    loss = check(make(base, base - 0.2 + noise(30, 0.02, seed=4)))
    assert loss.verdict == NOT_HELD and loss.high < 0.0 and loss.p_value < 1e-6


def test_few_noisy_pairs_are_inconclusive():
    base = np.array([0.40, 0.35, 0.50, 0.45])
    # Four gains of +0.1 ± 0.15: the interval straddles 0.
    noisy = claim_oracle_guidance_helps(guidance_runs(base, base + np.array([0.25, -0.05, 0.2, -0.03])))
    assert noisy.verdict == INCONCLUSIVE and noisy.low < 0.0 < noisy.high
    # Four positive gains: the bootstrap interval excludes 0, but no four pairs reach p < 0.05.
    clean = claim_oracle_guidance_helps(guidance_runs(base, base + np.array([0.1, 0.12, 0.08, 0.11])))
    assert clean.low > 0.0 and clean.p_value == pytest.approx(2 / 2**4) and clean.verdict == INCONCLUSIVE


def test_the_issues_case_a_tiny_gain_in_wide_noise_is_inconclusive():
    # Claim 4 was HELD on +0.012 SSIM with SD 0.22 under the fixed 0.01 threshold.
    base = np.clip(0.5 + noise(30, 0.1, seed=5), 0, 1)
    diff = symmetric(30, 0.22, seed=6) + 0.012
    claim = claim_oracle_guidance_helps(guidance_runs(base, base + diff))
    assert claim.effect == pytest.approx(0.012) and claim.verdict == INCONCLUSIVE
    assert "Wilcoxon p = " in claim.evidence and "95% CI [" in claim.evidence and "n = 30 pairs" in claim.evidence


def test_aggregation_at_the_ceiling_is_not_measured():
    ones = np.ones(10)
    assert claim_aggregation_helps(aggregation_runs(ones, ones)).verdict == NOT_MEASURED
    assert claim_aggregation_helps([run(0, semantic_accuracy=0.5)]).verdict == NOT_MEASURED


# -- claim 2: label recovery and naming at B = 4 -------------------------------------------------------


def b4_runs(naming: float, labels: float = 1.0, n: int = 10) -> list[Run]:
    tight = noise(n, 0.01, seed=7)
    return [run(i, batch_size=4, label_accuracy=labels, label_random_baseline=0.25,
                semantic_accuracy=float(naming + tight[i]), semantic_random_baseline=0.25) for i in range(n)]


def test_naming_at_b4_against_twice_random():
    held = claim_b4_naming_twice_random(b4_runs(0.6))
    assert held.verdict == HELD and held.effect == pytest.approx(2.4, abs=0.05) and held.low >= 2.0
    assert held.ratio and f"= {held.effect:.2f}× (claimed ≥ 2×), 95% CI [" in held.evidence
    failed = claim_b4_naming_twice_random(b4_runs(0.3))
    assert failed.verdict == NOT_HELD and failed.high < 2.0 and failed.effect == pytest.approx(1.2, abs=0.05)
    # Around 2× in wide noise: neither side is excluded.
    wide = [run(i, batch_size=4, semantic_accuracy=v, semantic_random_baseline=0.25)
            for i, v in enumerate([0.25, 0.75, 0.3, 0.7, 0.5, 0.5])]
    assert claim_b4_naming_twice_random(wide).verdict == INCONCLUSIVE


def test_label_recovery_and_naming_are_separate_rows():
    runs = b4_runs(0.3, labels=1.0)
    label, naming = claim_b4_labels_beat_random(runs), claim_b4_naming_twice_random(runs)
    assert (label.key, naming.key) == ("2a", "2b")
    # Exact label recovery (4× random) and poor naming (1.2× random) give opposite verdicts.
    assert label.verdict == HELD and label.effect == pytest.approx(4.0) and "label accuracy 1.000" in label.evidence
    assert naming.verdict == NOT_HELD and f"naming accuracy {naming.effect / 4:.3f} vs random 0.250" in naming.evidence
    keys = [c.key for c in evaluate_claims(runs)]
    assert keys == ["1a", "1b", "2a", "2b", "3a", "3b", "4", "5"]
    # Without the labeller only the label row is measured.
    no_names = [run(i, batch_size=4, label_accuracy=0.5, label_random_baseline=0.25) for i in range(3)]
    assert claim_b4_naming_twice_random(no_names).verdict == NOT_MEASURED
    assert claim_b4_labels_beat_random(no_names).verdict == HELD
    assert claim_b4_labels_beat_random([run(0, batch_size=2, label_accuracy=1.0)]).verdict == NOT_MEASURED


# -- claim 1: label accuracy with B ---------------------------------------------------------------------


def test_label_accuracy_drop_between_the_smallest_and_largest_batch():
    def runs(by_b: dict[int, float]) -> list[Run]:
        jitter = noise(8 * len(by_b), 0.01, seed=8)
        return [run(10 * b + s, batch_size=b, label_accuracy=float(v + jitter[k * 8 + s]))
                for k, (b, v) in enumerate(by_b.items()) for s in range(8)]

    drop = claim_label_accuracy_drops(runs({1: 1.0, 4: 0.8, 16: 0.5}))
    assert drop.verdict == HELD and drop.effect == pytest.approx(0.5, abs=0.02) and drop.sizes == (8, 8)
    assert "label accuracy at B=1 − at B=16" in drop.evidence
    assert claim_label_accuracy_drops(runs({1: 0.6, 16: 0.9})).verdict == NOT_HELD


# -- claim 3: aggregation over R batches ---------------------------------------------------------------


def test_batches_option_absent_or_single_is_not_measured():
    runs = [run(i, semantic_accuracy=0.5) for i in range(4)]
    assert "no unguided run has a 'batches' option" in claim_more_batches_help(runs).evidence
    assert claim_more_batches_help(runs).verdict == NOT_MEASURED
    same = [run(i, config={"batches": 3}, semantic_accuracy=0.5) for i in range(4)]
    assert claim_more_batches_help(same).verdict == NOT_MEASURED


def test_naming_per_r_paired_by_twin_runs():
    runs = []
    for seed in range(8):
        for r, acc in ((1, 0.4), (2, 0.5), (4, 0.7)):
            runs.append(run(seed, config={"batches": r}, semantic_accuracy=acc + 0.01 * (seed % 3)))
    claim = claim_more_batches_help(runs)
    assert claim.verdict == HELD and claim.effect == pytest.approx(0.3) and claim.n == 8
    assert claim.p_value is not None and claim.unit == "clients"
    assert "R=1: 0.409 [" in claim.evidence and "R=4: 0.709 [" in claim.evidence and "(n=8)" in claim.evidence
    # Without twins (different other settings) the two groups are compared as independent samples.
    unpaired = [Run(f"{x.id}-{x.config['batches']}", {**x.config, "seed": x.config["seed"] * 10 + x.config["batches"]},
                    x.metrics, x.folder) for x in runs]
    independent = claim_more_batches_help(unpaired)
    assert independent.verdict == HELD and independent.p_value is None and independent.sizes == (8, 8)
    assert "unpaired" in independent.evidence


def test_naming_per_r_from_the_prefixes_of_one_run():
    # One run of R = 10 batches per client reports its label map after 1, 2 and 5 batches too.
    runs = [run(seed, batch_size=4, config={"batches": 10}, semantic_batches=10, semantic_accuracy=0.3,
                semantic_accuracy_aggregated_R1=0.3 + 0.01 * seed, semantic_accuracy_aggregated_R2=0.4,
                semantic_accuracy_aggregated_R5=0.6, semantic_accuracy_aggregated=0.8 - 0.01 * (seed % 2))
            for seed in range(6)]
    claim = claim_more_batches_help(runs)
    assert claim.quantity == "naming accuracy at R=10 − at R=1" and claim.n == 6 and claim.unit == "clients"
    assert claim.verdict == HELD and claim.p_value == pytest.approx(2 / 2**6)
    assert all(f"R={r}: " in claim.evidence for r in (1, 2, 5, 10))
    # Flat in R: the map after 10 batches names no better than after one.
    flat = [run(seed, config={"batches": 10}, semantic_batches=10, semantic_accuracy=0.3,
                semantic_accuracy_aggregated_R1=0.5 + d, semantic_accuracy_aggregated=0.5 - d)
            for seed, d in enumerate(symmetric(10, 0.05, seed=11))]
    assert claim_more_batches_help(flat).verdict == INCONCLUSIVE


def test_guided_runs_stay_out_of_the_batch_size_and_naming_claims():
    # Oracle guidance hands the reconstruction its true class: its naming is not the seed's claim 2.
    def runs(mode: str, naming: float, first: int) -> list[Run]:
        return [run(first + i, batch_size=4, config={"guidance": mode}, semantic_accuracy=naming,
                    semantic_random_baseline=0.25) for i in range(6)]

    plain, oracle = runs("none", 0.3, 0), runs("oracle", 1.0, 10)
    claim = claim_b4_naming_twice_random(plain + oracle)
    assert claim.verdict == NOT_HELD and claim.n == 6 and claim.effect == pytest.approx(1.2)
    # With no unguided run at all, every run counts and the row says so.
    only = claim_b4_naming_twice_random(oracle)
    assert only.verdict == HELD and "no unguided runs" in only.evidence


# -- claim 5: search by guidance ------------------------------------------------------------------------


def test_search_accuracy_against_its_random_baseline():
    good = [run(i, search_accuracy=0.75, search_random_baseline=0.3) for i in range(8)]
    assert claim_search_beats_random(good).verdict == HELD
    chance = [run(i, search_accuracy=0.3 + d, search_random_baseline=0.3)
              for i, d in enumerate(symmetric(20, 0.1, seed=9))]
    assert claim_search_beats_random(chance).verdict == INCONCLUSIVE
    assert claim_search_beats_random([run(0, ssim=0.5)]).verdict == NOT_MEASURED


# -- intervals helpers ----------------------------------------------------------------------------------


def test_interval_helpers_known_answers():
    d = difference_interval([0.9, 0.9], [0.1, 0.2, 0.15], resamples=2000)
    assert d.value == pytest.approx(0.75) and d.n == (2, 3) and d.low < 0.75 < d.high
    one = difference_interval([0.9], [0.1, 0.2, 0.15], resamples=2000)  # one value enters as a constant
    assert one.value == pytest.approx(0.75) and 0.7 <= one.low < one.high <= 0.8
    r = ratio_interval([0.5, 0.5], [0.25, 0.25])
    assert (r.value, r.low, r.high, r.n) == (2.0, 2.0, 2.0, (2,))
    m = mean_interval([0.1 * i for i in range(20)], resamples=2000)
    assert m.low < m.value < m.high and m.value == pytest.approx(0.95)


# -- the page and the CLI ---------------------------------------------------------------------------


def test_report_page_and_cli_show_every_number_of_a_claim(tmp_path, capsys):
    from gradleak.cli import main
    from gradleak.experiments import ResultStore

    base = 0.4 + noise(8, 0.05, seed=10)
    with ResultStore(tmp_path) as store:
        for i, b in enumerate(base):  # oracle guidance: +0.2 on 8 client batches
            store.record(f"g{i}", {"batch_size": 2, "seed": i, "guidance": "oracle"},
                         summary={"ssim": float(b) + 0.2, "ssim_no_guidance": float(b), "guidance_mode": "oracle"})
    main(["report", str(tmp_path)])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "Oracle CLIP guidance" in x)
    assert line.strip().startswith("[HELD] (4)")
    assert all(s in line for s in ("= +0.200 (claimed > 0)", "95% CI [+0.200, +0.200]", "n = 8 pairs",
                                   f"Wilcoxon p = {2 / 2**8:.3g}"))
    assert "[NOT MEASURED] (2) At B = 4, the attacker names" in out
    page = (tmp_path / "report.html").read_text()
    row = page[page.index("<td>4</td>"):]
    row = row[:row.index("</tr>")]
    assert all(f"<td>{s}</td>" in row for s in ("+0.200", "&gt; 0", "[+0.200, +0.200]", "8 pairs", "0.00781"))
    assert "class='HELD'>HELD</td>" in row


def test_hit_or_miss_search_uses_the_exact_binomial_test():
    from gradleak.experiments.report.claims import _hits_against_chance

    strong = _hits_against_chance("search", [1.0] * 8 + [0.0] * 12, 0.1)  # 8 of 20 against 0.1
    assert strong.verdict == "HELD" and strong.p_value < 0.001 and "binomial p" in strong.evidence
    assert strong.low == pytest.approx(0.1912 - 0.1, abs=1e-3) and strong.high == pytest.approx(0.6395 - 0.1, abs=1e-3)
    chance = _hits_against_chance("search", [1.0] * 2 + [0.0] * 18, 0.1)  # exactly the chance rate
    assert chance.verdict != "HELD"


def test_defended_runs_do_not_enter_the_seeds_claims():
    # Undefended: aggregation clearly helps. Defended runs (a defence sweep) say the opposite; they
    # belong to "Where attacks stop", and the claim must read the undefended ones only.
    clean = aggregation_runs(np.full(20, 0.3) + noise(20, 0.01), np.full(20, 0.6) + noise(20, 0.01, seed=1))
    defended = [run(100 + i, config={"defense": ["prune:keep=0.01"]}, semantic_accuracy=0.6,
                    semantic_accuracy_aggregated=0.1) for i in range(40)]
    mixed = next(c for c in evaluate_claims(clean + defended) if c.key == claim_aggregation_helps(clean).key)
    assert mixed.verdict == HELD and mixed.effect == pytest.approx(0.3, abs=0.02)
    assert claim_aggregation_helps(clean + defended).verdict != HELD  # what counting them would say
