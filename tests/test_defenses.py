"""Client-side defences: known answers for each, their composition, their checks, and the wiring."""

import json
import math

import pytest
import torch
from torch import nn

from gradleak.cli import main
from gradleak.config import AttackConfig
from gradleak.defenses import DEFENSES, apply_defenses, build_defenses, dp_epsilon, global_norm, parse_defense
from gradleak.errors import ConfigError
from gradleak.experiments.spec import build_experiment, job_id
from gradleak.models import build_model
from gradleak.studies.checks import check_inputs
from gradleak.studies.client import client_update, client_update_with_batch, prepare_client, update_config
from gradleak.threat import UpdateConfig, simulate_client

# DP-SGD's accounting is Opacus's (the `dp` extra, which needs torch >= 2.6).
needs_opacus = pytest.mark.skipif(__import__("importlib.util").util.find_spec("opacus") is None,
                                  reason="opacus is not installed (pip install 'gradleak[dp]')")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _update(seed=0):
    g = _gen(seed)
    return [torch.randn(5, 4, generator=g), torch.randn(7, generator=g), torch.randn(3, 2, 2, generator=g)]


def test_clip_caps_the_norm_and_leaves_a_small_update_alone():
    upd = _update()
    norm = float(global_norm(upd))
    clipped = apply_defenses(["clip:C=0.5"], upd, _gen())
    assert float(global_norm(clipped)) == pytest.approx(0.5, rel=1e-6)
    cos = nn.functional.cosine_similarity(torch.cat([t.flatten() for t in clipped]),
                                          torch.cat([t.flatten() for t in upd]), dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-6)  # the direction is kept
    same = apply_defenses([f"clip:C={2 * norm}"], upd, _gen())
    assert all(torch.equal(a, b) for a, b in zip(same, upd))


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5, 1.0])
def test_prune_keeps_exactly_the_stated_count_per_tensor(keep):
    upd = _update()
    pruned = apply_defenses([f"prune:keep={keep}"], upd, _gen())
    for t, p in zip(upd, pruned):
        k = max(1, math.ceil(keep * t.numel()))
        assert int((p != 0).sum()) == k
        kept = p != 0
        assert torch.equal(p[kept], t[kept])  # kept entries unchanged
        if k < t.numel():  # every kept magnitude is at least every dropped one
            assert t[kept].abs().min() >= t[~kept].abs().max()


def test_client_dp_noise_has_std_sigma_times_C():
    C, sigma = 2.0, 0.5
    zeros = [torch.zeros(400, 500)]  # 200k independent draws; a zero update is not rescaled by clipping
    noisy = apply_defenses([f"client-dp:C={C},sigma={sigma}"], zeros, _gen())[0]
    assert float(noisy.std()) == pytest.approx(sigma * C, rel=0.02)
    assert abs(float(noisy.mean())) < 0.01
    # Seeded from the generator only: the same seed, the same noise; another seed, other noise.
    assert torch.equal(noisy, apply_defenses([f"client-dp:C={C},sigma={sigma}"], zeros, _gen())[0])
    assert not torch.equal(noisy, apply_defenses([f"client-dp:C={C},sigma={sigma}"], zeros, _gen(1))[0])


def _two_examples():
    """A 2-in, 3-class linear model and two examples whose per-example gradients are known in closed form."""
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0], [1.0, 0.2], [-0.3, 0.4]]))
        model.bias.copy_(torch.tensor([0.1, -0.2, 0.0]))
    x = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    y = torch.tensor([0, 2])
    per_example = []
    for xi, yi in zip(x, y):  # CE gradient: dz = softmax(z) − onehot(y); dW = dz xᵀ, db = dz
        z = model.weight.detach() @ xi + model.bias.detach()
        dz = torch.softmax(z, 0) - nn.functional.one_hot(yi, 3).float()
        per_example.append([torch.outer(dz, xi), dz])
    return model, x, y, per_example


def test_dp_sgd_without_noise_and_a_large_C_is_the_plain_gradient():
    model, x, y, per_example = _two_examples()
    plain = simulate_client(model, x, y).tensors
    dp = simulate_client(model, x, y, defenses=build_defenses(["dp-sgd:C=1000,sigma=0"]))
    hand = [(a + b) / 2 for a, b in zip(*per_example)]
    for p, d, h in zip(plain, dp.tensors, hand):
        torch.testing.assert_close(d, p)
        torch.testing.assert_close(d, h)
    assert dp.defenses[0]["epsilon"] is None  # σ = 0: no finite ε


def test_dp_sgd_clips_each_example_before_summing():
    model, x, y, per_example = _two_examples()
    C = 0.01
    norms = [float(global_norm(g)) for g in per_example]
    assert min(norms) > 10 * C  # both examples are clipped
    dp = simulate_client(model, x, y, defenses=build_defenses([f"dp-sgd:C={C},sigma=0"])).tensors
    clipped = [[t * (C / n) for t in g] for g, n in zip(per_example, norms)]
    assert all(float(global_norm(c)) == pytest.approx(C, rel=1e-5) for c in clipped)
    for d, a, b in zip(dp, *clipped):
        torch.testing.assert_close(d, (a + b) / 2)
    assert float(global_norm(dp)) <= C * (1 + 1e-6)
    # Per-example, not whole-batch, clipping: clipping the mean gradient gives another update.
    batch_clipped = apply_defenses([f"clip:C={C}"], simulate_client(model, x, y).tensors, _gen())
    assert not all(torch.allclose(d, c) for d, c in zip(dp, batch_clipped))


@needs_opacus
def test_dp_sgd_acts_on_every_fedavg_step_and_its_noise_is_seeded():
    model, x, y, _ = _two_examples()
    cfg = UpdateConfig("fedavg", local_steps=3, lr=0.1)
    plain = simulate_client(model, x, y, cfg).tensors
    same = simulate_client(model, x, y, cfg, defenses=build_defenses(["dp-sgd:C=1000,sigma=0"])).tensors
    for p, s in zip(plain, same):
        torch.testing.assert_close(s, p)
    tiny = simulate_client(model, x, y, cfg, defenses=build_defenses(["dp-sgd:C=0.001,sigma=0"])).tensors
    assert float(global_norm(tiny)) <= 3 * 0.1 * 0.001 * (1 + 1e-5)  # K steps of lr · (≤ C)
    noisy = [simulate_client(model, x, y, cfg, defenses=build_defenses(["dp-sgd:C=1,sigma=1"]),
                             defense_generator=_gen(s)).tensors for s in (3, 3, 4)]
    assert all(torch.equal(a, b) for a, b in zip(noisy[0], noisy[1]))
    assert not all(torch.equal(a, b) for a, b in zip(noisy[0], noisy[2]))


@needs_opacus
def test_epsilon_at_tiny_sigma_uses_low_orders_without_a_loose_bound_warning():
    import warnings

    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.step(noise_multiplier=0.01, sample_rate=4 / 846)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = accountant.get_epsilon(1e-5)  # best order = the smallest default one: loose
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Opacus's "optimal order is the smallest alpha" would raise
        eps = dp_epsilon(0.01, 4 / 846, 1, 1e-5)
    assert eps < default  # a tighter (smaller) valid bound


@needs_opacus
def test_epsilon_is_opacus_rdp_accountants_value():
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    sigma, q, steps, delta = 1.0, 0.01, 10, 1e-5
    eps = dp_epsilon(sigma, q, steps, delta)
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    assert eps == accountant.get_epsilon(delta)
    orders = accountant.DEFAULT_ALPHAS  # the same value by Opacus's lower-level RDP functions
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    assert eps == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0], rel=1e-12)
    assert eps == pytest.approx(1.0353, abs=1e-3)  # the figure this check reported when written
    # The client's record: q = local batch / N of its data, one accountant step per local step.
    model, x, y, _ = _two_examples()
    upd = simulate_client(model, x, y, UpdateConfig("fedavg", local_steps=4, lr=0.1, local_batch_size=1),
                          defenses=build_defenses(["dp-sgd:C=1,sigma=1.5,delta=1e-6"]), data_size=200)
    rec = upd.defenses[0]
    assert rec["sample_rate"] == 1 / 200 and rec["steps"] == 4 and rec["delta"] == 1e-6
    assert rec["epsilon"] == dp_epsilon(1.5, 1 / 200, 4, 1e-6)


def test_quantize_is_unbiased_and_many_bits_are_the_identity():
    t = torch.randn(50, generator=_gen())
    fine = apply_defenses(["quantize:bits=20"], [t], _gen())[0]
    torch.testing.assert_close(fine, t, atol=float(t.max() - t.min()) / (2 ** 20 - 1) * 1.01, rtol=0)
    coarse = torch.stack([apply_defenses(["quantize:bits=1"], [t], _gen(s))[0] for s in range(4000)])
    assert set(coarse.unique().tolist()) <= {float(t.min()), float(t.max())}  # two levels
    # E[Q(t)] = t: each entry is a Bernoulli between the two levels; allow 5 standard errors of the mean.
    span = t.max() - t.min()
    p = (t - t.min()) / span
    se = span * torch.sqrt(p * (1 - p) / coarse.shape[0])
    assert bool(((coarse.mean(0) - t).abs() <= 5 * se + 1e-5).all())
    assert abs(float((coarse.mean(0) - t).mean())) < 0.02  # and no drift overall


def test_sign_sends_signs_times_the_mean_magnitude():
    t = torch.tensor([[-2.0, 0.0], [1.0, 3.0]])
    (s,) = apply_defenses(["sign"], [t], _gen())
    assert torch.equal(s, torch.tensor([[-1.5, 0.0], [1.5, 1.5]]))


def test_composition_follows_the_listed_order():
    upd = _update()
    clip_then_noise = apply_defenses(["clip:C=1", "client-dp:C=1000,sigma=0.01"], upd, _gen())
    noise_then_clip = apply_defenses(["client-dp:C=1000,sigma=0.01", "clip:C=1"], upd, _gen())
    assert float(global_norm(clip_then_noise)) > 10  # noise of std 10 per coordinate after the clip
    assert float(global_norm(noise_then_clip)) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ConfigError, match="list it before clip"):  # per-example: inside the steps, first
        build_defenses(["clip:C=1", "dp-sgd:C=1,sigma=1"])


@pytest.mark.parametrize("spec, words", [
    ("client-dp:C=1,sigma=-0.1", "client-dp: sigma must be ≥ 0"),
    ("clip:C=0", "clip: C must be > 0"),
    ("dp-sgd:C=-1,sigma=1", "dp-sgd: C must be > 0"),
    ("prune:keep=0", "prune: keep must be > 0 and ≤ 1"),
    ("prune:keep=1.5", "prune: keep must be > 0 and ≤ 1"),
    ("dp-sgd:C=1,sigma=1,delta=1", "dp-sgd: delta must be > 0 and < 1"),
    ("dp-sgd:C=1,sigma=1,delta=0", "dp-sgd: delta must be > 0 and < 1"),
    ("clip:C=1,D=2", "clip: unknown parameter 'D'; it takes C"),
    ("clip:C=big", "clip: C must be a number"),
    ("quantize:bits=2.5", "quantize: bits must be an integer"),
    ("quantize:bits=0", "quantize: bits must be ≥ 1"),
    ("clip", "clip: needs C"),
    ("dp-sgd:C=1", "dp-sgd: needs sigma"),
    ("sign:k=1", "sign: unknown parameter 'k'; it takes no parameters"),
    ("secagg:N=0", "secagg: N must be ≥ 1"),
    ("secagg:N=1.5", "secagg: N must be an integer"),
    ("secagg", "secagg: needs N"),
])
def test_bad_parameters_are_one_line_config_errors_before_any_work(spec, words):
    with pytest.raises(ConfigError) as exc:
        check_inputs(AttackConfig.of(defense=[spec]))
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_defense_and_misuse_are_config_errors():
    with pytest.raises(ConfigError, match="unknown defense 'noise'"):
        AttackConfig.of(defense=["noise:C=1"])
    with pytest.raises(ConfigError, match="a recorded update"):
        check_inputs(AttackConfig.of(defense=["clip:C=1"], observed_update=__file__))
    model = build_model("convnet", (1, 8, 8), 10, width=4, seed=1).train()
    with pytest.raises(ConfigError, match="BatchNorm in train mode"):
        simulate_client(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]),
                        defenses=build_defenses(["dp-sgd:C=1,sigma=1"]))


def test_registry_and_parsing():
    assert set(DEFENSES.names()) == {"clip", "client-dp", "dp-sgd", "prune", "quantize", "secagg", "sign"}
    assert parse_defense(" dp-sgd: C=1 , sigma=0.5") == ("dp-sgd", {"C": 1.0, "sigma": 0.5, "delta": 1e-5})
    assert parse_defense("quantize:bits=4") == ("quantize", {"bits": 4})


def test_configs_without_defenses_keep_their_ids_and_grids_take_lists():
    assert job_id(AttackConfig.of()) == "44136fa355b3"
    assert job_id(AttackConfig.of(defense=["clip:C=1"])) != job_id(AttackConfig.of())
    exp = build_experiment({"base": {"iterations": 2}, "grid": {"defense": [[], ["clip:C=1", "prune:keep=0.1"]]}})
    assert [j.config.client.defense for j in exp.jobs] == [(), ("clip:C=1", "prune:keep=0.1")]
    with pytest.raises(ConfigError, match="grid point defense=.*clip: C must be > 0"):
        build_experiment({"grid": {"defense": [["clip:C=0"]]}})


def _cli(args):
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    return exc.value.code


@needs_opacus
def test_attack_cli_applies_and_records_the_defenses(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(["attack", "--defense", "clip:C=0.001", "--defense", "dp-sgd:C=1,sigma=0.5", "--iterations", "5",
                 "-q", "-o", str(out)]) == 2  # dp-sgd listed after clip: refused before any work
    assert "list it before clip" in capsys.readouterr().err and not out.exists()
    assert _cli(["attack", "--defense", "dp-sgd:C=1,sigma=0.5", "--defense", "clip:C=0.001", "--iterations", "5",
                 "-q", "-o", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["defense"] == ["dp-sgd:C=1,sigma=0.5", "clip:C=0.001"]
    dp, clip = result["defenses"]
    assert clip == {"name": "clip", "C": 0.001}
    assert dp["name"] == "dp-sgd" and dp["steps"] == 1 and dp["delta"] == 1e-5
    assert dp["epsilon"] == pytest.approx(dp_epsilon(0.5, dp["sample_rate"], 1, 1e-5))


def test_without_opacus_dp_sgd_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "opacus", None)  # import fails as when it is not installed
    monkeypatch.setitem(sys.modules, "opacus.accountants", None)
    with pytest.raises(ConfigError, match=r"pip install 'gradleak\[dp\]'"):
        dp_epsilon(1.0, 0.01, 10, 1e-5)


def _clients(cfg, n, x, y, defenses=()):
    """Each of the n clients' update, simulated on its own slice of the aggregate's batch."""
    client = prepare_client(cfg)
    b = x.shape[0] // n
    return [simulate_client(client.model, x[k * b:(k + 1) * b], y[k * b:(k + 1) * b], update_config(cfg),
                            client.data.mean, client.data.std, defenses=build_defenses(defenses),
                            data_size=len(client.data)).tensors for k in range(n)]


@pytest.mark.parametrize("update", ["fedsgd", "fedavg"])
def test_secure_aggregate_is_the_mean_of_the_clients_updates(update):
    cfg = AttackConfig.of(defense=["secagg:N=3"], batch_size=2, update=update, local_steps=2)
    client = prepare_client(cfg)
    agg, x, y = client_update_with_batch(cfg, client)
    assert x.shape[0] == y.shape[0] == 6
    assert torch.equal(x[:2], client.images) and torch.equal(y[:2], client.labels)  # this client's batch first
    assert not torch.equal(x[2:4], x[:2]) and not torch.equal(x[4:], x[2:4])  # the others hold other batches
    a, b, c = _clients(cfg, 3, x, y)
    for t, ta, tb, tc in zip(agg.tensors, a, b, c):
        assert torch.equal(t, (ta + tb + tc) / 3)  # the revealed sum over N, exactly
    assert agg.kind == update and agg.defenses == [{"name": "secagg", "N": 3}]
    again, x2, _ = client_update_with_batch(cfg, prepare_client(cfg))  # reproducible from the run seed
    assert torch.equal(x2, x) and all(torch.equal(p, q) for p, q in zip(again.tensors, agg.tensors))
    with pytest.raises(ConfigError, match="secagg: this study attacks one client's batch"):
        client_update(cfg, client)  # one-batch studies (rounds) refuse the aggregate


@pytest.mark.parametrize("before", [[], ["client-dp:C=1,sigma=0.1"]])
def test_secagg_of_one_client_is_no_aggregation(before):
    plain_cfg = AttackConfig.of(defense=before, batch_size=3)
    one_cfg = AttackConfig.of(defense=[*before, "secagg:N=1"], batch_size=3)
    plain_client, one_client = prepare_client(plain_cfg), prepare_client(one_cfg)
    for batch in (None, "next"):  # the first batch and a further one (fresh noise, the same stream)
        plain, px, py = client_update_with_batch(plain_cfg, plain_client,
                                                 plain_client.next_batch() if batch else None)
        one, ox, oy = client_update_with_batch(one_cfg, one_client, one_client.next_batch() if batch else None)
        assert torch.equal(px, ox) and torch.equal(py, oy) and px.shape[0] == 3
        assert all(torch.equal(p, q) for p, q in zip(plain.tensors, one.tensors))
        assert one.defenses == (plain.defenses or []) + [{"name": "secagg", "N": 1}]
    assert torch.equal(client_update(one_cfg, one_client).tensors[0], client_update(plain_cfg, plain_client).tensors[0])


def test_secagg_clips_each_client_before_aggregating():
    C = 0.01
    cfg = AttackConfig.of(defense=[f"clip:C={C}", "secagg:N=2"], batch_size=2)
    agg, x, y = client_update_with_batch(cfg, prepare_client(cfg))
    raw = _clients(cfg, 2, x, y)
    assert min(float(global_norm(u)) for u in raw) > 10 * C  # both clients' updates are clipped
    clipped = _clients(cfg, 2, x, y, [f"clip:C={C}"])
    assert all(float(global_norm(u)) == pytest.approx(C, rel=1e-5) for u in clipped)
    for t, a, b in zip(agg.tensors, *clipped):
        assert torch.equal(t, (a + b) / 2)
    assert float(global_norm(agg.tensors)) <= C * (1 + 1e-6)
    # Per client, not on the aggregate: clipping the mean of the raw updates gives another update.
    clip_of_mean = apply_defenses([f"clip:C={C}"], [(a + b) / 2 for a, b in zip(*raw)], _gen())
    assert not all(torch.allclose(t, c) for t, c in zip(agg.tensors, clip_of_mean))
    assert agg.defenses == [{"name": "clip", "C": C}, {"name": "secagg", "N": 2}]


def test_secagg_goes_last_once():
    with pytest.raises(ConfigError, match="secagg aggregates the clients' finished updates: list it last, after clip"):
        build_defenses(["secagg:N=2", "clip:C=1"])
    with pytest.raises(ConfigError, match="at most one aggregation"):
        build_defenses(["secagg:N=2", "secagg:N=3"])
    assert [d.name for d in build_defenses(["dp-sgd:C=1,sigma=1", "clip:C=1", "secagg:N=2"])] == [
        "dp-sgd", "clip", "secagg"]
    upd = _update()
    assert all(torch.equal(a, b) for a, b in zip(apply_defenses(["secagg:N=4"], upd, _gen()), upd))
    with pytest.raises(ConfigError, match=r"secagg: N·B = 2·300 = 600 is more than the 450 images"):
        cfg = AttackConfig.of(defense=["secagg:N=2"], batch_size=300)
        client_update_with_batch(cfg, prepare_client(cfg))


def test_attack_on_a_secure_aggregate_is_scored_against_all_clients_images(tmp_path):
    out = tmp_path / "run"
    assert _cli(["attack", "--defense", "secagg:N=2", "-b", "2", "--iterations", "5", "-q", "-o", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert len(result["assignment"]) == 4 and len(result["true_labels"]) == 4
    assert len(result["recovered_labels"]) == 4  # the attacker knows the aggregate covers N·B examples
    assert result["defenses"] == [{"name": "secagg", "N": 2}]
    assert result["config"]["defense"] == ["secagg:N=2"]
