"""Utility of defences (FedAvg accuracy) and the report's "where attacks stop" section: known answers
on digits and on synthetic runs, and a tiny defences experiment end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from gradleak.config import AttackConfig
from gradleak.data import load_dataset
from gradleak.errors import ConfigError
from gradleak.experiments import build_experiment, build_report, load_experiment, run_sweep
from gradleak.experiments.report.defenses import NONE_IN_RANGE, stop_table, where_attacks_stop
from gradleak.experiments.report.runs import Run
from gradleak.experiments.utility import utility_jobs
from gradleak.models import build_model
from gradleak.studies.utility import UtilityBudget, fedavg_utility, server_round, utility_id
from gradleak.threat import UpdateConfig, simulate_client

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


# -- utility: known answers ---------------------------------------------------------------------


def test_undefended_fedavg_learns_digits_well_beyond_chance(digits):
    u = fedavg_utility(AttackConfig.of(batch_size=4, threads=1), rounds=200, clients=4, data=digits)
    assert u.chance == pytest.approx(0.1) and u.n_test == len(digits[1])
    assert u.low > 0.25 and u.low <= u.accuracy <= u.high  # the whole interval well above chance (0.1)
    assert [r for r, _ in u.history][-1] == 200 and u.history[-1][1] == pytest.approx(u.accuracy)


def test_noise_that_drowns_the_update_leaves_the_model_near_chance(digits):
    u = fedavg_utility(AttackConfig.of(batch_size=4, threads=1, defense=["client-dp:C=1,sigma=1000"]), rounds=200,
                       clients=4, data=digits)
    assert u.accuracy < 0.2


@pytest.mark.slow
def test_dp_sgd_with_huge_sigma_leaves_the_model_near_chance(digits):
    u = fedavg_utility(AttackConfig.of(batch_size=4, threads=1, defense=["dp-sgd:C=1,sigma=1000"]), rounds=200,
                       clients=4, data=digits)
    assert u.accuracy < 0.2


def test_secure_aggregation_costs_no_utility(digits):
    # The server learns the same mean of the clients' updates: the trained model is the same.
    plain = fedavg_utility(AttackConfig.of(batch_size=2, threads=1), rounds=20, clients=3, data=digits)
    secagg = fedavg_utility(AttackConfig.of(batch_size=2, threads=1, defense=["secagg:N=4"]), rounds=20, clients=3,
                            data=digits)
    assert secagg.accuracy == plain.accuracy and secagg.history == plain.history


@pytest.mark.parametrize("kind", ["fedsgd", "fedavg"])
def test_a_round_applies_the_mean_of_the_clients_updates(digits, kind):
    train, _ = digits
    model = build_model("lenet", train.input_shape, train.num_classes, seed=0)
    cfg = UpdateConfig(kind, local_steps=2 if kind == "fedavg" else 1, lr=0.05)
    batches = [(train.images[i:i + 3], train.labels[i:i + 3]) for i in (0, 3, 6)]
    start = [p.detach().clone() for p in model.parameters()]
    expected = [simulate_client(model, x, y, cfg, train.mean, train.std).tensors for x, y in batches]
    step = server_round(model, batches, cfg, train.mean, train.std)
    for k, (p, p0) in enumerate(zip(model.parameters(), start)):
        average = sum(e[k] for e in expected) / 3
        assert torch.allclose(step[k], average, atol=1e-7)
        moved = -cfg.lr * average if kind == "fedsgd" else average  # a gradient is stepped, a delta added
        assert torch.allclose(p.detach() - p0, moved, atol=1e-6)


def test_utility_ids_ignore_the_attackers_options_and_budgets_are_checked():
    a = AttackConfig.of(batch_size=4, defense=["clip:C=1"])
    assert utility_id(a, 10, 2) == utility_id(a.with_options(iterations=7, labeler="classifier"), 10, 2)
    assert utility_id(a, 10, 2) != utility_id(a.with_options(defense=["clip:C=2"]), 10, 2)
    assert utility_id(a, 10, 2) != utility_id(a, 11, 2) != utility_id(a.with_options(seed=1), 10, 2)
    assert UtilityBudget.parse({"rounds": 5, "clients": 2, "seeds": [0, 1]}).seeds == (0, 1)
    for bad, message in (({"rounds": 0}, "rounds must be a positive integer"), ({"round": 3}, "unknown key"),
                         ({"seeds": 0}, "seeds must be a non-empty list"), ([3], "must be a mapping")):
        with pytest.raises(ConfigError, match=message):
            UtilityBudget.parse(bad)
    with pytest.raises(ConfigError, match="utility.rounds"):
        build_experiment({"base": {"batch_size": 2}, "utility": {"rounds": -1}})


def test_a_sweep_asks_one_utility_per_setting_not_per_attack_run():
    exp = build_experiment({"base": {"batch_size": 2}, "utility": {"rounds": 3, "clients": 2, "seeds": [0, 1]},
                            "grid": {"iterations": [5, 6], "defense": [[], ["clip:C=1"]], "seed": [0, 1, 2]}})
    jobs = utility_jobs(exp, UtilityBudget.parse(exp.utility))
    assert len(exp.jobs) == 12 and len(jobs) == 4  # 2 defences × the 2 utility seeds
    assert {(tuple(j.config.client.defense), j.config.run.seed) for j in jobs} == {
        ((), 0), ((), 1), (("clip:C=1",), 0), (("clip:C=1",), 1)}
    own = utility_jobs(exp, UtilityBudget(3, 2, None))  # no seeds listed: each run's own seed
    assert len(own) == 6


# -- the "weakest setting" rule on synthetic runs ----------------------------------------------


def _run(i: int, defense: list[str], label: float, ssim: float, seed: int, batch_size: int = 4) -> Run:
    config = AttackConfig.of(batch_size=batch_size, seed=seed, defense=defense).to_dict()
    metrics = {"label_accuracy": label, "label_random_baseline": 0.3, "ssim": ssim, "ssim_random_baseline": 0.1,
               "psnr": 20.0, "psnr_random_baseline": 6.0}
    return Run(f"r{i}", config, metrics, Path("."))


def synthetic_runs() -> list[Run]:
    """dp-sgd: labels leak at σ = 0.01 (1.0 vs 0.3), are ≈ random from σ = 0.1; SSIM leaks at every σ.
    clip: a smaller C is stronger; labels ≈ random at C = 0.1 only, listed after C = 1."""
    rows = []
    noisy = [0.2, 0.5, 0.25]  # mean 0.317 vs 0.3: the interval of the excess reaches 0
    for seed in range(3):
        rows.append(([], 1.0, 0.9, seed))
        rows.append((["dp-sgd:C=1,sigma=0.01"], 1.0, 0.8, seed))
        rows.append((["dp-sgd:C=1,sigma=0.1"], noisy[seed], 0.5, seed))
        rows.append((["dp-sgd:C=1,sigma=1"], noisy[2 - seed], 0.3 + 0.01 * seed, seed))
        rows.append((["clip:C=0.1"], noisy[seed], 0.9, seed))
        rows.append((["clip:C=1"], 0.9, 0.9, seed))
    return [_run(i, *row) for i, row in enumerate(rows)]


def test_weakest_setting_indistinguishable_from_random_known_answer(tmp_path):
    stops = {s.defence: s for s in where_attacks_stop(tmp_path, synthetic_runs())}
    assert set(stops) == {"dp-sgd", "clip"}
    dp = stops["dp-sgd"]
    assert [s.label for s in dp.settings] == ["dp-sgd sigma=0.01", "dp-sgd sigma=0.1", "dp-sgd sigma=1"]
    assert dp.stops["label accuracy"] == "dp-sgd sigma=0.1"
    assert dp.stops["SSIM"].startswith(NONE_IN_RANGE)
    assert dp.stops["naming accuracy"].startswith("not judged")  # the runs recorded no naming
    assert dp.reference is not None and dp.reference.cells["label accuracy"].indistinguishable is False
    clip = stops["clip"]
    assert [s.label for s in clip.settings] == ["clip C=1", "clip C=0.1"]  # weakest first: the larger C
    assert clip.stops["label accuracy"] == "clip C=0.1"
    header, rows = stop_table(list(stops.values()))
    assert header[:3] == ["context", "defence", "strength"] and len(rows) == 2


def test_a_stronger_setting_that_leaks_again_is_named(tmp_path):
    runs = [r for r in synthetic_runs() if "sigma=1\"" not in json.dumps(r.config)]
    runs = [r for r in runs if r.config["defense"] != ["dp-sgd:C=1,sigma=1"]]
    runs += [_run(100 + s, ["dp-sgd:C=1,sigma=1"], 0.95, 0.2, s) for s in range(3)]
    (dp,) = [s for s in where_attacks_stop(tmp_path, runs) if s.defence == "dp-sgd"]
    assert dp.stops["label accuracy"] == "dp-sgd sigma=0.1 (leaks again at dp-sgd sigma=1)"


def test_utility_attaches_from_the_sweep_folder_and_contexts_split_by_batch_size(tmp_path):
    runs = synthetic_runs() + [_run(200 + s, ["clip:C=1"], 0.9, 0.9, s, batch_size=8) for s in range(2)]
    cfg = AttackConfig.of(batch_size=4, defense=["dp-sgd:C=1,sigma=0.1"])
    (tmp_path / "utility").mkdir()
    for seed, acc in ((0, 0.5), (1, 0.7)):
        u = {"accuracy": acc, "low": acc - 0.05, "high": acc + 0.05, "rounds": 3, "clients": 2,
             "setting": {**{k: v for k, v in cfg.with_options(seed=seed).to_dict().items()}}}
        (tmp_path / "utility" / f"u{seed}.json").write_text(json.dumps(u))
    stops = where_attacks_stop(tmp_path, runs)
    assert sorted({s.context for s in stops}) == ["batch_size=4", "batch_size=8"]
    (dp,) = [s for s in stops if s.defence == "dp-sgd"]
    at = {s.label: s.utility for s in dp.settings}
    assert at["dp-sgd sigma=0.1"].value == pytest.approx(0.6) and at["dp-sgd sigma=1"] is None
    (lonely,) = [s for s in stops if s.context == "batch_size=8"]
    assert lonely.reference is None and lonely.stops["label accuracy"].startswith(NONE_IN_RANGE)


# -- end to end ----------------------------------------------------------------------------------

TINY = {"name": "tiny_defenses",
        "base": {"dataset": "digits", "model": "lenet", "batch_size": 2, "trained_steps": 20, "iterations": 5,
                 "tv": 0.0, "labels": "ilrg", "labeler": "classifier", "classifier_steps": 10, "threads": 1},
        "utility": {"rounds": 4, "clients": 2, "seeds": [0]},
        "grid": [{"defense": [[]], "seed": [0, 1]},
                 {"defense": [["client-dp:C=1,sigma=0.01"], ["client-dp:C=1,sigma=1"]], "seed": [0, 1]}]}


@pytest.mark.slow
def test_tiny_defences_experiment_runs_and_its_report_has_the_section(tmp_path):
    exp = build_experiment(copy.deepcopy(TINY))
    summary = run_sweep(exp, tmp_path, progress=False)
    assert (summary.done, summary.failed, summary.utility_done, summary.utility_failed) == (6, 0, 3, 0)
    assert len(list((tmp_path / "utility").glob("*.json"))) == 3
    again = run_sweep(exp, tmp_path, progress=False)  # resumed: runs and utilities are cached
    assert (again.done, again.skipped, again.utility_done) == (0, 6, 0)
    report = build_report(tmp_path)
    page = report.html.read_text()
    assert "Where attacks stop" in page and "client-dp sigma=1" in page
    assert [s.defence for s in report.stops] == ["client-dp"]
    assert all(s.utility is not None for s in report.stops[0].settings) and report.stops[0].reference.utility
    assert (tmp_path / "stop_client_dp_strength.png").is_file() and (tmp_path / "stop_client_dp_utility.png").is_file()
    for key in ("ssim_random_baseline", "psnr_random_baseline"):
        assert all(r.value(key) is not None for s in report.stops for r in s.reference.runs)


def test_shipped_defences_experiments_parse(tmp_path):
    small = load_experiment(REPO_ROOT / "experiments" / "defenses_small.yaml")
    assert {j.config.data.dataset for j in small.jobs} == {"digits"} and small.utility is not None
    assert any(not j.config.client.defense for j in small.jobs)  # the undefended reference
    families = {j.config.client.defense[0].split(":")[0] for j in small.jobs if j.config.client.defense}
    assert families == {"dp-sgd", "client-dp", "clip", "prune", "quantize", "sign", "secagg"}
    full = load_experiment(REPO_ROOT / "experiments" / "defenses.yaml", overrides={"data_dir": str(tmp_path)})
    assert {j.config.data.dataset for j in full.jobs} == {"digits", "cifar10"}
    assert {j.config.victim.model for j in full.jobs} == {"lenet", "convnet"}
    assert {j.config.data.batch_size for j in full.jobs} == {1, 4, 16}
    assert {j.config.threat.knows_defense for j in full.jobs} == {False, True}  # naive and defence-aware
    assert {j.config.client.defense[0].split(":")[0] for j in full.jobs if j.config.client.defense} == families


def test_uninformative_image_baseline_known_answer():
    from gradleak.studies.evaluate import uninformative_image_baseline

    import math

    from scipy import integrate, stats

    # The start images are 0.5 + 0.25·N(0, 1) clamped to [0, 1]; against black images each pixel's
    # squared error is E[clamp(X)²] (≈ 0.3125 unclamped), so PSNR ≈ 10·log10(1 / E[clamp(X)²]).
    mse, _ = integrate.quad(lambda v: min(max(v, 0.0), 1.0) ** 2 * stats.norm.pdf(v, 0.5, 0.25), -2, 3, points=[0, 1])
    black = torch.zeros(4, 1, 16, 16)
    base = uninformative_image_baseline(black)
    assert base["psnr_random_baseline"] == pytest.approx(10 * math.log10(1 / mse), abs=0.05)
    assert abs(base["ssim_random_baseline"]) < 0.05  # noise carries no structure of the truth
    assert uninformative_image_baseline(black) == base  # seeded: a rerun scores the same
