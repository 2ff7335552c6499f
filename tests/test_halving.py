"""Successive halving for the label search (schedules.py): the rung rule, a known loss landscape,
survivors continuing exactly, the bookkeeping in result.json, and real digits runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gradleak.attacks.inversion import InversionConfig, Reconstruction
from gradleak.attacks.inversion import schedules
from gradleak.attacks.inversion.batched import BatchedInversion, invert_batched
from gradleak.attacks.inversion.guidance import build_guide
from gradleak.attacks.inversion.schedules import Rung, check_rungs, halving_rungs
from gradleak.attacks.inversion.search import run_guided
from gradleak.errors import ConfigError
from gradleak.models import build_model
from gradleak.threat import ThreatModel, simulate_client

pytestmark = pytest.mark.usefixtures("one_thread")

OLD_CANDIDATE_KEYS = {"labels", "guidance", "matching_loss", "prior_loss", "guidance_loss", "score"}
OLD_SUMMARY_KEYS = {"guidance_mode", "guide", "guidance_weight", "search_space", "guidance_labels", "search_labels",
                    "candidate_losses", "chosen_candidate", "guidance_seconds"}


def _observe(data, model="lenet", batch=1, seed=0, first=0, width=None):
    x, y = data.images[first:first + batch], data.labels[first:first + batch]
    m = build_model(model, data.input_shape, 10, width=width, seed=seed).train()
    update = simulate_client(m, x, y, mean=data.mean, std=data.std)
    obs = ThreatModel().observe(m, update, data.input_shape, 10, data.mean, data.std, batch_size=batch,
                                class_names=data.class_names)
    return obs, x, y


def _guide(seed=0):
    from gradleak.vision import SmallCNN

    torch.manual_seed(seed)
    return SmallCNN(1, 10, 8, width=8).eval()


# ---- the rung rule -----------------------------------------------------------------------------


def test_rungs_are_geometric_and_leave_at_most_eta_to_the_full_budget():
    assert halving_rungs(10, 200) == [Rung(22, 4), Rung(66, 2)]  # T/9, T/3: 10 → 4 → 2 run to T
    assert halving_rungs(19, 200) == [Rung(22, 7), Rung(66, 3)]  # B = 2 with counts: 1 + 2·9
    assert halving_rungs(10, 200, eta=2) == [Rung(25, 5), Rung(50, 3), Rung(100, 2)]
    assert halving_rungs(3, 200) == [] and halving_rungs(1, 200) == []  # K ≤ η: exhaustive
    assert halving_rungs(4, 200) == [Rung(66, 2)]
    assert halving_rungs(10, 5) == [Rung(1, 2)]  # T/9 rounds to 0: that rung is skipped
    assert halving_rungs(10, 1) == []
    for k in range(1, 40):
        rungs = halving_rungs(k, 1000)
        survivors = rungs[-1].keep if rungs else k
        assert survivors <= 3 and all(a.iterations < b.iterations for a, b in zip(rungs, rungs[1:]))


def test_bad_rungs_and_rates_are_one_line_errors():
    with pytest.raises(ConfigError, match="eta"):
        halving_rungs(10, 100, eta=1)
    with pytest.raises(ConfigError, match="increase"):
        check_rungs([Rung(10, 5), Rung(10, 2)], 10, 100)
    with pytest.raises(ConfigError, match="increase"):
        check_rungs([Rung(100, 5)], 10, 100)
    with pytest.raises(ConfigError, match="keep"):
        check_rungs([Rung(10, 5), Rung(20, 6)], 10, 100)


# ---- a known loss landscape ----------------------------------------------------------------------


class FakeRun:
    """Stands in for BatchedRun: candidate k's matching loss at iteration t is ``curves[k](t)``; its
    guidance loss is deliberately anti-correlated (lowest for the worst candidate), so ranking by it
    would pick wrong."""

    curves: list = []
    calls: list = []

    def __init__(self, observation, labels, config, guidance=None, guidance_targets=None, inits=None,
                 progress=False):
        self.labels, self.config = labels, config
        self.alive, self.it, self.results = list(range(len(labels))), 0, {}

    def advance(self, until):
        type(self).calls.append(("advance", until, list(self.alive)))
        self.it = until

    def scores(self, with_guidance=False):
        type(self).calls.append(("scores", with_guidance))
        m = torch.tensor([[self.curves[c](self.it)] for c in self.alive])
        g = -m if with_guidance else None
        return m, torch.zeros_like(m), g

    def _record(self, cands, scores):
        for c in cands:
            q = self.alive.index(c)
            rec = Reconstruction(torch.zeros(1, 1, 8, 8), self.labels[c], float(scores[0][q, 0]),
                                 [float(scores[0][q, 0])], [torch.zeros(1, 1, 8, 8)], self.it, 0.0, [])
            self.results[c] = (rec, 0.0, None if scores[2] is None else float(scores[2][q, 0]))

    def drop(self, cands, scores):
        self._record(cands, scores)
        self.alive = [c for c in self.alive if c not in cands]

    def finish(self):
        self._record(list(self.alive), self.scores(True))
        out = [self.results[c] for c in range(len(self.labels))]
        return BatchedInversion([r for r, _, _ in out], [p for _, p, _ in out], [g for _, _, g in out], 0.0)

    def close(self):
        pass


def _fake_search(monkeypatch, digits, curves, **kwargs):
    FakeRun.curves, FakeRun.calls = curves, []
    monkeypatch.setattr(schedules, "BatchedRun", FakeRun)
    obs, _, y = _observe(digits)
    cfg = InversionConfig(iterations=90)
    return run_guided(obs, y, cfg, "search", "classifier", 0.1, aux_classifier=_guide(), schedule="halving",
                      **kwargs)


def test_halving_keeps_the_best_candidate_that_is_not_first_early(monkeypatch, digits):
    """Ten candidates, T = 90 (rungs at 10 and 30, keep 4 then 2). Candidate 7 ends best but is only
    third at the first rung and second at the second: halving keeps it and picks it, as the
    exhaustive search (lowest loss at T) would. Everything halving cannot tell: a candidate ranked
    below ⌈n/η⌉ at a rung is gone, however it would have ended (next test)."""
    finals = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.05, 0.2, 0.1]

    def curve(k):
        early = {7: 0.5, 9: 0.3, 8: 0.4}.get(k, 1.0 + k / 10)  # 7 is third at t ≤ 10
        return lambda t: early if t <= 10 else (0.35 if k == 7 and t <= 30 else finals[k] if t > 30 else
                                                {9: 0.2}.get(k, early))

    out = _fake_search(monkeypatch, digits, [curve(k) for k in range(10)])
    assert out.chosen == 7 and out.search_labels.tolist() == [7]
    assert [r.to_dict() for r in out.rungs] == [{"iterations": 10, "compared": 10, "kept": 4},
                                                {"iterations": 30, "compared": 4, "kept": 2}]
    assert out.rungs[0].kept == [0, 7, 8, 9] and out.rungs[1].kept == [7, 9]
    # never ranked by the guidance loss: the rungs asked for no guidance at all
    assert [c for c in FakeRun.calls if c[0] == "scores"] == [("scores", False)] * 2 + [("scores", True)]
    assert FakeRun.calls[0] == ("advance", 10, list(range(10)))
    assert FakeRun.calls[-2] == ("advance", 90, [7, 9])

    s = json.loads(json.dumps(out.summary()))
    assert s["search_schedule"] == "halving" and s["rungs"] == [r.to_dict() for r in out.rungs]
    c = s["candidate_losses"]
    assert c[7]["rung_losses"] == pytest.approx([0.5, 0.35]) and c[7]["dropped_at_rung"] is None
    assert c[7]["iterations"] == 90 and c[7]["matching_loss"] == pytest.approx(0.05)
    assert c[8]["rung_losses"] == pytest.approx([0.4, 0.4]) and c[8]["dropped_at_rung"] == 1 and c[8]["iterations"] == 30
    assert c[1]["rung_losses"] == pytest.approx([1.1]) and c[1]["dropped_at_rung"] == 0 and c[1]["iterations"] == 10
    assert c[1]["guidance_loss"] is None and c[7]["guidance_loss"] == pytest.approx(-0.05)
    assert s["candidate_iterations"] == 6 * 10 + 2 * 30 + 2 * 90 and s["exhaustive_candidate_iterations"] == 900


def test_halving_misses_a_late_bloomer(monkeypatch, digits):
    """What halving can miss: candidate 0 is worst until the first rung and best at T. The
    exhaustive search would pick it; halving drops it at rung 0 and picks the best of the rest."""
    curves = [lambda t: 2.0 if t <= 10 else 0.01] + [lambda t, k=k: 0.1 * k for k in range(1, 10)]
    out = _fake_search(monkeypatch, digits, curves)
    assert out.candidates[0].dropped_at_rung == 0 and out.chosen == 1


def test_halving_ranks_by_the_selection_score_and_drops_diverged_candidates_first(monkeypatch, digits):
    curves = [lambda t: float("nan")] + [lambda t, k=k: 0.1 * k for k in range(1, 10)]
    out = _fake_search(monkeypatch, digits, curves)
    assert out.candidates[0].dropped_at_rung == 0 and out.chosen == 1
    assert out.summary()["candidate_losses"][0]["rung_losses"] == [None]  # JSON without NaN


# ---- survivors continue exactly --------------------------------------------------------------------


def test_halving_that_keeps_everyone_equals_exhaustive_exactly(digits):
    obs, _, y = _observe(digits, "convnet", batch=2, width=4, first=3)
    cfg = InversionConfig(iterations=16, restarts=2, regularizers={"tv": 0.05})
    kw = dict(aux_classifier=_guide(), search_space="labels", max_candidates=6)
    ex = run_guided(obs, y, cfg, "search", "classifier", 0.1, **kw)
    keep = run_guided(obs, y, cfg, "search", "classifier", 0.1, schedule=[Rung(3, 6), Rung(9, 6)], **kw)
    assert keep.chosen == ex.chosen and torch.equal(keep.reconstruction.images, ex.reconstruction.images)
    for a, b in zip(ex.candidates, keep.candidates):
        assert (a.matching_loss, a.prior_loss, a.guidance_loss) == (b.matching_loss, b.prior_loss, b.guidance_loss)
        assert b.dropped_at_rung is None and b.iterations == 16 and len(b.rung_losses) == 2
    assert ex.reconstruction.history == keep.reconstruction.history


def test_survivors_continue_their_optimiser_state_and_lr_schedule(digits):
    """Drop candidates at iterations 4 and 9 of 16 (the lr decays at 6, 10 and 14): each survivor
    ends where it ends in the exhaustive run (equal on CPU; float rounding of a smaller vmapped batch
    allowed). A restart of Adam or of the lr schedule at a rung would move it far off."""
    obs, _, y = _observe(digits, "convnet", batch=1, width=4, first=5)
    cfg = InversionConfig(iterations=16, restarts=2, regularizers={"tv": 0.05})
    labels = torch.arange(6).unsqueeze(1)
    guide = build_guide("classifier", aux_classifier=_guide())
    from gradleak.attacks.inversion.guidance import Guidance

    ex = invert_batched(obs, labels, cfg, Guidance(guide, 0.1))
    hv, records = schedules.invert_halving(obs, labels, cfg, [Rung(4, 3), Rung(9, 2)], Guidance(guide, 0.1))
    assert len(records[0].compared) == 6 and len(records[1].kept) == 2
    for c in records[1].kept:
        a, b = ex.reconstructions[c], hv.reconstructions[c]
        assert b.iterations == 16 and b.matching_loss == pytest.approx(a.matching_loss, rel=1e-4, abs=1e-6)
        assert torch.allclose(a.images, b.images, atol=1e-5)
        assert hv.guidance_losses[c] == pytest.approx(ex.guidance_losses[c], rel=1e-4)
    dropped = [c for c in range(6) if c not in records[1].kept]
    assert all(hv.guidance_losses[c] is None and hv.reconstructions[c].iterations in (4, 9) for c in dropped)


def test_replay_on_an_exhaustive_run_picks_what_the_live_race_picks(digits):
    """An exhaustive run scored at the rungs (keeping all) replays the race: the same survivors at
    each rung and the same final pick as live halving over ``guidance`` (small gaps, so not trivial)."""
    obs, _, y = _observe(digits, "convnet", batch=1, width=4, first=7)
    cfg = InversionConfig(iterations=27, regularizers={"tv": 0.05})
    kw = dict(aux_classifier=_guide(1), search_space="guidance")
    rungs = halving_rungs(10, 27)
    live = run_guided(obs, y, cfg, "search", "classifier", 0.1, schedule="halving", **kw)
    full = run_guided(obs, y, cfg, "search", "classifier", 0.1, schedule=[Rung(r.iterations, 10) for r in rungs], **kw)
    chosen, kept = schedules.replay_halving([r.scores for r in full.rungs], [c.score for c in full.candidates], rungs)
    assert kept == [r.kept for r in live.rungs] and chosen == live.chosen
    assert full.rungs[0].scores == live.rungs[0].scores  # identical computation up to the first rung
    # a different final ranking moves the replayed pick among the finalists only
    finals = [0.0 if k == 0 else 1.0 for k in range(10)]
    assert schedules.replay_halving([r.scores for r in full.rungs], finals, rungs)[0] == (0 if 0 in kept[-1] else
                                                                                             min(kept[-1]))
    with pytest.raises(ConfigError, match="every candidate"):  # rung scores missing a candidate still alive
        schedules.replay_halving([{0: 1.0}, full.rungs[1].scores], finals, rungs)
    with pytest.raises(ConfigError, match="rungs scored"):
        schedules.replay_halving([full.rungs[0].scores], finals, rungs)


# ---- exhaustive unchanged ---------------------------------------------------------------------------


def test_exhaustive_is_the_default_and_writes_no_new_keys(digits):
    obs, _, y = _observe(digits, first=2)
    cfg = InversionConfig(iterations=6)
    kw = dict(aux_classifier=_guide(), search_space="guidance")
    default = run_guided(obs, y, cfg, "search", "classifier", 0.1, **kw)
    explicit = run_guided(obs, y, cfg, "search", "classifier", 0.1, schedule="exhaustive", **kw)
    few = run_guided(obs, y, cfg, "search", "classifier", 0.1, schedule="halving", max_candidates=3, **kw)
    assert torch.equal(default.reconstruction.images, explicit.reconstruction.images)
    s = default.summary()
    assert set(s) == OLD_SUMMARY_KEYS and all(set(c) == OLD_CANDIDATE_KEYS for c in s["candidate_losses"])
    assert few.schedule == "exhaustive" and set(few.summary()) == OLD_SUMMARY_KEYS  # 3 ≤ η: no rung
    with pytest.raises(ConfigError, match="schedule"):
        run_guided(obs, y, cfg, "search", "classifier", 0.1, schedule="racing", **kw)
    with pytest.raises(ConfigError, match="batched"):
        run_guided(obs, y, cfg, "search", "classifier", 0.1, schedule="halving", batched=False, **kw)


# ---- real runs on digits ------------------------------------------------------------------------------


def test_halving_picks_the_class_exhaustive_picks_on_digits_b1(digits):
    """B = 1, LeNet, search over labels, 60 iterations (rungs at 6 and 20): a wrong label cannot
    match the last layer's gradient, so the race ends where the exhaustive search ends."""
    cfg = InversionConfig(iterations=60, regularizers={"tv": 0.05})
    for trial in range(3):
        obs, _, y = _observe(digits, seed=trial, first=11 * trial)
        kw = dict(aux_classifier=_guide(trial), search_space="labels")
        ex = run_guided(obs, y, cfg, "search", "classifier", 0.1, **kw)
        hv = run_guided(obs, y, cfg, "search", "classifier", 0.1, schedule="halving", **kw)
        assert hv.search_labels.tolist() == ex.search_labels.tolist() == y.tolist()
        assert [r.iterations for r in hv.rungs] == [6, 20]
        assert hv.candidates[hv.chosen].matching_loss == pytest.approx(ex.candidates[ex.chosen].matching_loss,
                                                                       rel=1e-4, abs=1e-6)


def test_halving_over_multisets_b2_keeps_the_batch_labels(digits):
    """B = 2 with recovered counts: 19 multisets, 19 → 7 → 3 at T/9 and T/3."""
    from gradleak.attacks.labels import recover_labels

    obs, _, y = _observe(digits, batch=2, first=3)
    cfg = InversionConfig(iterations=90, regularizers={"tv": 0.05})
    out = run_guided(obs, recover_labels(obs), cfg, "search", "classifier", 0.1, aux_classifier=_guide(),
                     search_space="labels", schedule="halving")
    assert len(out.candidates) == 19 and [r.to_dict()["kept"] for r in out.rungs] == [7, 3]
    assert sorted(out.search_labels.tolist()) == sorted(y.tolist())
    assert sum(c.dropped_at_rung is None for c in out.candidates) == 3
    assert out.summary()["candidate_iterations"] < 19 * 90 / 2


def test_attack_config_reaches_the_halving_schedule(tmp_path):
    from gradleak.config import AttackConfig
    from gradleak.studies.attack import run_attack

    cfg = AttackConfig.of(batch_size=1, iterations=40, tv=0.0, guidance="search", classifier_steps=30, seed=2,
                          search_schedule="halving")
    s = run_attack(cfg, tmp_path, progress=False).summary
    assert s["search_schedule"] == "halving" and len(s["rungs"]) == 2
    chosen = s["candidate_losses"][s["chosen_candidate"]]
    assert chosen["dropped_at_rung"] is None and chosen["iterations"] == 40
    assert not math.isnan(chosen["score"])
