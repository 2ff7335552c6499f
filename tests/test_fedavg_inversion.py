"""FedAvg-aware inversion (gradleak.attacks.inversion.fedavg): the differentiable simulation of the
client's local training, unrolled matching against the gradient reading, and the schedule estimate."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradleak.attacks.inversion import invert, preset
from gradleak.attacks.inversion.batched import invert_batched
from gradleak.attacks.inversion.fedavg import (K_GRID, UnrolledMatcher, as_gradient, simulate_delta, step_plan,
                                               with_schedule)
from gradleak.data import load_dataset
from gradleak.errors import ConfigError
from gradleak.metrics import evaluate_images
from gradleak.models import build_model, normalize_input
from gradleak.threat import ThreatModel, simulate_client
from gradleak.threat.update import UpdateConfig


class Tiny(nn.Module):
    """Conv + train-mode BatchNorm + linear: the smallest model with every kind of layer the unroll meets."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "test")


def _observe(model, update, data, y, **threat):
    return ThreatModel(knows_labels=True, **threat).observe(model, update, data.input_shape, data.num_classes,
                                                            data.mean, data.std, batch_size=len(y), labels=y)


@pytest.mark.parametrize("steps,local_batch", [(1, None), (5, None), (2, 2), (5, 2), (7, 3)])
def test_simulation_reproduces_the_client_exactly(digits, steps, local_batch):
    model = build_model("lenet", digits.input_shape, digits.num_classes, seed=0)
    x, y, _ = digits.sample_batch(4, torch.Generator().manual_seed(0))
    cfg = UpdateConfig("fedavg", steps, 0.05, local_batch)
    update = simulate_client(model, x, y, cfg, mean=digits.mean, std=digits.std, generator=torch.Generator().manual_seed(7))
    # The client's own generator replays its reshuffles: the attacker never has it, the test does.
    plan = step_plan(4, local_batch, steps, generator=torch.Generator().manual_seed(7))
    delta = simulate_delta(model, normalize_input(x, digits.mean, digits.std), y, 0.05, plan, create_graph=False)
    for sim, real in zip(delta, update.tensors):
        torch.testing.assert_close(sim, real, rtol=1e-5, atol=1e-7)
    assert max(float(t.abs().max()) for t in update.tensors) > 1e-3  # the update is not trivially zero


def test_tiny_model_with_train_mode_batchnorm_is_reproduced_and_left_untouched():
    torch.manual_seed(0)
    model = Tiny().train()
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 1])
    update = simulate_client(model, x, y, UpdateConfig("fedavg", 5, 0.1, 2), generator=torch.Generator().manual_seed(1))
    before = copy.deepcopy(model.state_dict())
    plan = step_plan(4, 2, 5, generator=torch.Generator().manual_seed(1))
    delta = simulate_delta(model, x, y, 0.1, plan, create_graph=False)
    for sim, real in zip(delta, update.tensors):
        torch.testing.assert_close(sim, real, rtol=1e-5, atol=1e-7)
    for name, value in model.state_dict().items():  # BN running statistics stay as the server sent them
        assert torch.equal(value, before[name]), name


def test_step_plan_keeps_the_natural_first_epoch_and_averages_unknown_orders():
    plan = step_plan(4, 2, 5)
    assert [p.tolist() if p is not None else None for p in plan] == [[0, 1], [2, 3], None, None, None]
    assert all(p.tolist() == [0, 1, 2, 3] for p in step_plan(4, None, 3))


def test_unroll_is_differentiable_through_the_weights():
    """gradcheck of ⟨Δ'(x), v⟩ in float64: the pixel gradient includes the path through θ_t, which
    the attacker's patched layers would drop; checkpointing gives the same gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    y = torch.tensor([0, 2])
    v = [torch.randn_like(p) for p in model.parameters()]
    plan = step_plan(2, None, 3)

    def score(x, checkpointed=False):
        delta = simulate_delta(model, x, y, 0.5, plan, checkpointed=checkpointed)
        return sum((d * w).sum() for d, w in zip(delta, v))

    x = torch.randn(2, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(score, (x,))
    (plain,) = torch.autograd.grad(score(x), x)
    (ckpt,) = torch.autograd.grad(score(x, True), x)
    torch.testing.assert_close(plain, ckpt)


def test_true_images_match_the_observed_update_exactly(digits):
    """The unrolled matching loss is 0 at the private batch (cosine), the gradient reading's is not."""
    model = build_model("lenet", digits.input_shape, digits.num_classes, seed=0)
    x, y, _ = digits.sample_batch(4, torch.Generator().manual_seed(0))
    update = simulate_client(model, x, y, UpdateConfig("fedavg", 5, 0.05), mean=digits.mean, std=digits.std)
    obs = _observe(model, update, digits, y)
    unrolled, _ = UnrolledMatcher(obs, preset("ig", fedavg_matching="unrolled", regularizers={}), y).matching_loss(x)
    assert float(unrolled.detach()) < 1e-6
    reading = invert(obs, y, preset("ig", iterations=1, regularizers={}), progress=False).matching_loss
    assert reading > 1e-3
    ck = UnrolledMatcher(obs, preset("ig", fedavg_matching="unrolled-checkpoint", regularizers={}), y)
    assert ck.checkpointed and float(ck.matching_loss(x)[0].detach()) < 1e-6
    delta = simulate_delta(model, obs.normalize(x), y, 0.05, step_plan(4, None, 5), create_graph=False)
    torch.testing.assert_close(as_gradient(delta, 0.05, 5)[0], obs.gradient()[0])


def test_refusals_and_fedsgd(digits):
    model = build_model("lenet", digits.input_shape, digits.num_classes, seed=0)
    x, y, _ = digits.sample_batch(2, torch.Generator().manual_seed(0))
    fedavg = simulate_client(model, x, y, UpdateConfig("fedavg", 3, 0.05), mean=digits.mean, std=digits.std)
    unrolled = preset("ig", iterations=3, regularizers={}, fedavg_matching="unrolled")
    with pytest.raises(ConfigError, match="local schedule"):  # withheld and not estimated
        invert(_observe(model, fedavg, digits, y, knows_local_schedule=False), y, unrolled, progress=False)
    with pytest.raises(ConfigError, match="gradients only"):
        invert_batched(_observe(model, fedavg, digits, y), y[None], unrolled)
    with pytest.raises(ConfigError, match="unknown fedavg_matching"):
        invert(_observe(model, fedavg, digits, y), y, preset("ig", iterations=1, fedavg_matching="unroled"), progress=False)
    # FedSGD: the option is ignored (one full-batch step is the gradient itself).
    fedsgd = _observe(model, simulate_client(model, x, y, mean=digits.mean, std=digits.std), digits, y)
    a = invert(fedsgd, y, unrolled, progress=False)
    b = invert(fedsgd, y, preset("ig", iterations=3, regularizers={}), progress=False)
    assert torch.equal(a.images, b.images)


@pytest.mark.slow
def test_unrolled_inversion_beats_the_gradient_reading_on_digits(digits):
    """B = 4, K = 5, η = 0.05, same budget and seed: unrolled matching recovers the batch."""
    model = build_model("lenet", digits.input_shape, digits.num_classes, seed=1)
    x, y, _ = digits.sample_batch(4, torch.Generator().manual_seed(1))
    update = simulate_client(model, x, y, UpdateConfig("fedavg", 5, 0.05), mean=digits.mean, std=digits.std)
    obs = _observe(model, update, digits, y)
    ssim = {mode: evaluate_images(invert(obs, y, preset("ig", iterations=150, regularizers={}, seed=1,
                                                       fedavg_matching=mode), progress=False).images, x).ssim
            for mode in ("gradient", "unrolled")}
    assert ssim["unrolled"] >= 0.9
    assert ssim["unrolled"] > ssim["gradient"] + 0.1


@pytest.mark.slow
@pytest.mark.parametrize("steps,lr", [(1, 0.1), (5, 0.05)])
def test_withheld_schedule_is_estimated_within_bounds(digits, steps, lr):
    """Stated bounds (fedavg.ScheduleEstimate): ηK within 10 %, K within one grid step of the truth."""
    model = build_model("lenet", digits.input_shape, digits.num_classes, seed=2)
    x, y, _ = digits.sample_batch(4, torch.Generator().manual_seed(2))
    update = simulate_client(model, x, y, UpdateConfig("fedavg", steps, lr), mean=digits.mean, std=digits.std)
    obs = _observe(model, update, digits, y, knows_local_schedule=False)
    assert obs.update.lr is None
    filled, estimate = with_schedule(obs, y, preset("ig", iterations=200, regularizers={}, seed=2,
                                                    fedavg_matching="unrolled"))
    assert abs(estimate.total_step / (steps * lr) - 1) < 0.10
    assert abs(K_GRID.index(estimate.local_steps) - K_GRID.index(steps)) <= 1
    assert filled.update.lr == estimate.lr and filled.update.local_steps == estimate.local_steps
    assert estimate.fit[estimate.local_steps] == min(estimate.fit.values())


@pytest.mark.slow
def test_run_attack_records_the_schedule_estimate():
    from gradleak.config import AttackConfig
    from gradleak.studies.attack import run_attack

    cfg = AttackConfig.of(update="fedavg", local_steps=5, local_lr=0.05, knows_labels=True, iterations=40,
                          knows_local_schedule=False, fedavg_matching="unrolled")
    summary = run_attack(cfg, progress=False).summary
    assert summary["inversion"]["fedavg_matching"] == "unrolled"
    assert summary["schedule_estimate"]["local_steps"] in K_GRID and summary["schedule_estimate"]["lr"] > 0
    granted = run_attack(cfg.with_options(knows_local_schedule=True), progress=False).summary
    assert "schedule_estimate" not in granted
