"""Objectives, regularisers and the optimisation loop, on inputs with known answers."""

import pytest
import torch
from torch import nn

from gradleak.attacks.inversion import OBJECTIVES, REGULARIZERS, InversionConfig, invert, preset
from gradleak.attacks.inversion.invert import GradientMatcher
from gradleak.attacks.inversion.regularizers import total_variation
from gradleak.errors import ConfigError
from gradleak.metrics import evaluate_images
from gradleak.models import build_model
from gradleak.threat import ThreatModel, simulate_client


def test_l2_objective_known_value():
    target = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    dummy = [torch.tensor([0.0, 2.0]), torch.tensor([[3.0]])]
    assert OBJECTIVES.get("l2")(target)(dummy).item() == pytest.approx(1 + 9)
    assert OBJECTIVES.get("l2")(target)(target).item() == 0


def test_cosine_objective_known_values():
    t = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    cos = OBJECTIVES.get("cosine")(t)
    assert cos([torch.tensor([2.0, 0.0]), torch.tensor([0.0])]).item() == pytest.approx(0.0, abs=1e-7)
    assert cos([torch.tensor([0.0, 5.0]), torch.tensor([0.0])]).item() == pytest.approx(1.0)
    assert cos([torch.tensor([-1.0, 0.0]), torch.tensor([0.0])]).item() == pytest.approx(2.0)
    # flattened over all tensors together, not averaged per tensor
    assert cos([torch.tensor([1.0, 0.0]), torch.tensor([1.0])]).item() == pytest.approx(1 - 1 / 2 ** 0.5)


def test_total_variation_known_values():
    assert total_variation(torch.zeros(1, 1, 4, 4)).item() == 0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1  # columns alternate: every horizontal neighbour differs by 1
    assert total_variation(stripes).item() == pytest.approx(1.0)
    ramp = torch.arange(4.0).view(1, 1, 4, 1).expand(1, 1, 4, 4)
    assert total_variation(ramp).item() == pytest.approx(1.0)


def _digit_setup(model="lenet", B=2, labels_known=True, bn=False):
    from gradleak.data import load_dataset

    data = load_dataset("digits", "test")
    x, y = data.images[:B], data.labels[:B]
    m = build_model(model, data.input_shape, 10, width=8 if model == "convnet" else None, seed=0)
    m.train()  # batch statistics: the harder case, and the one where granted BN statistics matter
    upd = simulate_client(m, x, y, mean=data.mean, std=data.std)
    obs = ThreatModel(knows_labels=labels_known, knows_bn_stats=bn).observe(
        m, upd, data.input_shape, 10, data.mean, data.std, batch_size=B, labels=y)
    return obs, x, y


def test_bn_stats_prior_is_zero_at_the_granted_batch_statistics():
    torch.manual_seed(0)
    obs, x, y = _digit_setup("convnet", B=4, bn=True)
    prior = REGULARIZERS.get("bn_stats")(obs, obs.model)
    obs.model(obs.normalize(x))
    assert prior(x).item() == pytest.approx(0.0, abs=1e-4)
    obs.model(obs.normalize(torch.rand_like(x)))
    assert prior(x).item() > 0.1


def test_bn_stats_prior_without_granted_statistics_targets_running_statistics():
    obs, x, _ = _digit_setup("convnet", B=2, bn=False)
    prior = REGULARIZERS.get("bn_stats")(obs, obs.model)
    layers = [m for m in obs.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(t[0], m.running_mean) for t, m in zip(prior.targets, layers))
    obs.model(obs.normalize(x))
    assert prior(x).item() > 0


def test_matching_loss_is_zero_at_the_true_images():
    obs, x, y = _digit_setup("lenet", B=2)
    for objective in OBJECTIVES:
        m = GradientMatcher(obs, InversionConfig(objective=objective, regularizers={}), y)
        loss, _ = m.matching_loss(x, create_graph=False)
        assert loss.item() == pytest.approx(0.0, abs=1e-5)
        wrong, _ = m.matching_loss(torch.rand_like(x), create_graph=False)
        assert wrong.item() > 1e-3


@pytest.mark.parametrize("attack, iterations", [("ig", 400), ("dlg", 15)])
def test_attacks_reconstruct_digits_on_lenet(attack, iterations):
    obs, x, y = _digit_setup("lenet", B=2)
    rec = invert(obs, y, preset(attack, iterations=iterations, regularizers={}), progress=False)
    ev = evaluate_images(rec.images, x)
    assert ev.ssim > 0.9, ev
    assert rec.images.min() >= 0 and rec.images.max() <= 1  # box constraint


def test_restarts_keep_the_lowest_final_loss():
    obs, x, y = _digit_setup("lenet", B=1)
    rec = invert(obs, y, preset("ig", iterations=20, restarts=3), progress=False)
    assert len(rec.restart_losses) == 3 and rec.matching_loss == min(rec.restart_losses)
    best = rec.restart_losses.index(rec.matching_loss)
    assert torch.equal(rec.images, rec.restart_images[best])


def test_invert_is_deterministic_for_a_seed():
    obs, x, y = _digit_setup("lenet", B=1)
    a = invert(obs, y, preset("ig", iterations=10, seed=3), progress=False)
    b = invert(obs, y, preset("ig", iterations=10, seed=3), progress=False)
    assert torch.equal(a.images, b.images)


def test_bf16_matching_loss_stays_close_to_fp32():
    obs, x, y = _digit_setup("convnet", B=2)
    x0 = torch.rand_like(x)
    lo = GradientMatcher(obs, InversionConfig(precision="fp32"), y).matching_loss(x0, False)[0]
    hi = GradientMatcher(obs, InversionConfig(precision="bf16"), y).matching_loss(x0, False)[0]
    assert abs(lo.item() - hi.item()) < 0.05 * max(lo.item(), 1e-3) + 1e-3


def test_unknown_names_are_config_errors():
    obs, x, y = _digit_setup("lenet", B=1)
    with pytest.raises(ConfigError, match="choose one of"):
        invert(obs, y, InversionConfig(objective="nope"), progress=False)
    with pytest.raises(ConfigError, match="choose one of"):
        invert(obs, y, InversionConfig(regularizers={"nope": 1.0}), progress=False)
    with pytest.raises(ConfigError):
        preset("nope")


def test_cosine_objective_gradient_matches_autograd_in_float64():
    torch.manual_seed(0)
    shapes = [(4, 3), (4,), (2, 2, 3)]
    target = [torch.randn(s) for s in shapes]
    dummy = [torch.randn(s, requires_grad=True) for s in shapes]
    loss = OBJECTIVES.get("cosine")(target)(dummy)
    grads = torch.autograd.grad(loss, dummy)
    g = torch.cat([d.detach().double().reshape(-1) for d in dummy]).requires_grad_(True)
    t = torch.cat([x.double().reshape(-1) for x in target])
    ref = 1 - g @ t / (g.norm() * t.norm())
    (ref_grad,) = torch.autograd.grad(ref, [g])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(torch.cat([x.reshape(-1) for x in grads]).double(), ref_grad, rtol=1e-5, atol=1e-8)


def test_cosine_objective_backward_of_a_zero_weighted_loss_is_zero_in_every_dtype():
    torch.manual_seed(0)
    target = [torch.randn(4, 3), torch.randn(4)]
    dummy = [torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True), torch.randn(4, requires_grad=True)]
    grads = torch.autograd.grad(0.0 * OBJECTIVES.get("cosine")(target)(dummy), dummy)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32]
    assert all(not g.any() for g in grads)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"lr": -0.1}, {"lr": float("nan")}, {"iterations": 0}, {"restarts": 0}])
def test_both_engines_refuse_budgets_and_steps_no_optimiser_can_run(bad):
    from dataclasses import replace

    from gradleak.attacks.inversion.batched import invert_batched

    obs, _, y = _digit_setup("lenet", B=1)
    cfg = replace(preset("ig", iterations=2), **bad)
    with pytest.raises(ConfigError):
        invert(obs, y, cfg, progress=False)
    with pytest.raises(ConfigError):
        invert_batched(obs, y.unsqueeze(0), cfg)
