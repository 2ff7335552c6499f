"""``rlu``: label counts from multi-step FedAvg deltas (exact on a synthetic last layer, better than
the gradient reading on digits, ``ilrg-dummy``'s answer where nothing drifts or no schedule is known)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradleak.attacks.labels import LABEL_STRATEGIES, recover_labels
from gradleak.attacks.labels.rlu import FALLBACK, METHOD
from gradleak.models import build_model
from gradleak.threat import ThreatModel, UpdateConfig, simulate_client

C = 10

pytestmark = pytest.mark.usefixtures("one_thread")


class FixedFeatures(nn.Module):
    """Every input maps to the same non-negative features, so dummy and private inputs coincide."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        self.register_buffer("features", torch.rand(dim, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return self.features.expand(len(x), -1)


def observe(model, x, y, config, threat=ThreatModel(), mean=None, std=None):
    update = simulate_client(model, x, y, config, mean, std)
    return threat.observe(model, update, tuple(x.shape[1:]), C, mean, std, batch_size=len(y))


def counts_of(labels: torch.Tensor) -> torch.Tensor:
    return torch.bincount(labels, minlength=C)


def accuracy(estimate, labels: torch.Tensor) -> float:
    return float(torch.minimum(estimate.counts, counts_of(labels)).sum()) / len(labels)


def test_registered_last():
    assert list(LABEL_STRATEGIES.names())[-1] == METHOD


@pytest.mark.parametrize("batch_size,steps", [(8, 5), (16, 5), (16, 8)])
def test_exact_on_synthetic_last_layer_over_k_steps(batch_size, steps):
    """Full-batch steps at η = 0.2 move the predictions far enough from θ_0's that the gradient
    reading misses counts (ilrg-dummy misses all three batches at B = 16, K = 5); the simulation
    follows them.
    (Local mini-batches are approximate: their order in later epochs is the client's secret.)"""
    dim = 32
    config = UpdateConfig("fedavg", local_steps=steps, lr=0.2)
    generator = torch.Generator().manual_seed(batch_size)
    for trial in range(3):
        torch.manual_seed(100 + trial)
        model = nn.Sequential(FixedFeatures(dim, trial), nn.Linear(dim, C))
        labels = torch.randint(C, (batch_size,), generator=generator)
        x = torch.rand(batch_size, 1, 4, 4, generator=generator)
        obs = observe(model, x, labels, config)
        estimate = recover_labels(obs, METHOD)
        assert estimate.method == METHOD
        assert torch.equal(estimate.counts, counts_of(labels)), (estimate.scores, counts_of(labels))


def test_beats_the_gradient_reading_on_digits(digits):
    """Untrained LeNet on digits, K = 5 full-batch steps at η = 0.1 (the gradient reading falls to
    ≈ 0.78 at B = 16 there, docs/labels.md): mean over several batches."""
    model = build_model("lenet", digits.input_shape, C, seed=0)
    config = UpdateConfig("fedavg", local_steps=5, lr=0.1)
    generator = torch.Generator().manual_seed(0)
    ours, gradient = [], []
    for _ in range(6):
        x, y, _ = digits.sample_batch(16, generator)
        obs = observe(model, x, y, config, mean=digits.mean, std=digits.std)
        ours.append(accuracy(recover_labels(obs, METHOD), y))
        gradient.append(accuracy(recover_labels(obs, "ilrg-dummy"), y))
    mean_ours, mean_gradient = sum(ours) / len(ours), sum(gradient) / len(gradient)
    assert mean_ours > mean_gradient + 0.05, (ours, gradient)
    assert mean_ours >= 0.9, ours


@pytest.mark.slow
@pytest.mark.parametrize("config", [UpdateConfig("fedsgd"), UpdateConfig("fedavg", local_steps=1, lr=0.1)])
def test_unchanged_where_nothing_drifts(digits, config):
    """FedSGD and one full-batch FedAvg step: ``ilrg-dummy``'s counts, under rlu's name."""
    model = build_model("lenet", digits.input_shape, C, seed=0)
    generator = torch.Generator().manual_seed(1)
    for batch_size in (4, 16):
        x, y, _ = digits.sample_batch(batch_size, generator)
        obs = observe(model, x, y, config, mean=digits.mean, std=digits.std)
        ours, reference = recover_labels(obs, METHOD), recover_labels(obs, "ilrg-dummy")
        assert torch.equal(ours.counts, reference.counts) and ours.method == METHOD


def test_falls_back_to_the_gradient_reading_without_the_schedule(digits):
    model = build_model("lenet", digits.input_shape, C, seed=0)
    x, y, _ = digits.sample_batch(8, torch.Generator().manual_seed(2))
    config = UpdateConfig("fedavg", local_steps=5, lr=0.1)
    obs = observe(model, x, y, config, threat=ThreatModel(knows_local_schedule=False), mean=digits.mean, std=digits.std)
    estimate = recover_labels(obs, METHOD)
    assert estimate.method == FALLBACK and "gradient" in estimate.method
    assert torch.equal(estimate.counts, recover_labels(obs, "ilrg-dummy").counts)


def test_simulates_on_auxiliary_images_when_given(digits):
    from gradleak.attacks.labels import AuxData

    model = build_model("lenet", digits.input_shape, C, seed=0)
    x, y, _ = digits.sample_batch(12, torch.Generator().manual_seed(3))
    config = UpdateConfig("fedavg", local_steps=3, lr=0.1, local_batch_size=4)
    obs = observe(model, x, y, config, mean=digits.mean, std=digits.std)
    estimate = recover_labels(obs, METHOD, AuxData(images=digits.images[-64:]))
    assert estimate.method == METHOD and int(estimate.counts.sum()) == 12 and (estimate.counts >= 0).all()
    assert accuracy(estimate, y) >= 0.75
