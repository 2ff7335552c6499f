"""Analytic label recovery: known answers on synthetic last layers, exactness of iDLG on real
models, LLG's second stage, and the default strategy's accuracy on real digits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradleak.attacks.labels import DEFAULT_METHOD, LABEL_STRATEGIES, AuxData, LabelEstimate, recover_labels
from gradleak.attacks.labels.base import present_at_least, round_counts
from gradleak.attacks.labels.llg import llg_pick
from gradleak.errors import ConfigError
from gradleak.models import build_model
from gradleak.threat import ThreatModel, UpdateConfig, simulate_client

C = 10

pytestmark = pytest.mark.usefixtures("one_thread")


class ConstantFeatures(nn.Module):
    """Every input maps to the same non-negative feature vector: real and dummy features coincide."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.register_buffer("features", features)

    def forward(self, x):
        return self.features.expand(len(x), -1)


def observe(model, x, y, batch_size=None, threat=ThreatModel(), mean=None, std=None, config=UpdateConfig()):
    update = simulate_client(model, x, y, config, mean, std)
    return threat.observe(model, update, tuple(x.shape[1:]), C, mean, std, batch_size=batch_size)


def linear_head(dim: int, bias: bool = True, scale: float = 1.0, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    head = nn.Linear(dim, C, bias=bias)
    with torch.no_grad():
        head.weight.mul_(scale)
    return head


def feature_model(head: nn.Linear) -> nn.Module:
    """Inputs of shape (1, 1, D) in [0, 1] are the last layer's (non-negative) features."""
    return nn.Sequential(nn.Flatten(), head)


def counts_of(labels: torch.Tensor) -> torch.Tensor:
    return torch.bincount(labels, minlength=C)


def accuracy(estimate: LabelEstimate, labels: torch.Tensor) -> float:
    return float(torch.minimum(estimate.counts, counts_of(labels)).sum()) / len(labels)


# --- synthetic last layers with known answers ------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_idlg_single_sample_is_exact_for_every_class(bias):
    head = linear_head(16, bias=bias, scale=3.0)
    x = torch.rand(1, 1, 1, 16)
    for label in range(C):
        estimate = recover_labels(observe(feature_model(head), x, torch.tensor([label]), batch_size=1), "idlg")
        assert estimate.labels.tolist() == [label]


def test_yin_exact_for_distinct_labels_with_private_features():
    # each sample lights up its own feature: only present classes get a negative weight-gradient entry
    labels = torch.tensor([7, 2, 9, 0, 4, 5])
    x = torch.eye(len(labels), 12)[:, None, None, :] * 0.9 + 0.05
    obs = observe(feature_model(linear_head(12, scale=2.0)), x, labels, batch_size=len(labels))
    assert torch.equal(recover_labels(obs, "yin").counts, counts_of(labels))


CONSTANT_FEATURE_METHODS = ["geng", "llg+", "llg*", "ilrg", "ilrg-dummy"]


@pytest.mark.parametrize("method", CONSTANT_FEATURE_METHODS)
@pytest.mark.parametrize("labels", [[3, 3, 3, 1, 8, 8, 0], [5] * 4 + [2] * 9 + [7] * 3 + list(range(C))])
def test_exact_counts_when_features_do_not_depend_on_the_input(method, labels):
    # repeated labels, and B = 26 > C in the second case; non-uniform predictions
    labels = torch.tensor(labels)
    torch.manual_seed(1)
    model = nn.Sequential(ConstantFeatures(torch.rand(20)), linear_head(20, scale=4.0, seed=2))
    x = torch.rand(len(labels), 1, 4, 4)
    estimate = recover_labels(observe(model, x, labels, batch_size=len(labels)), method)
    assert torch.equal(estimate.counts, counts_of(labels))


def test_llg_second_stage_picks_argmin_of_updated_scores():
    # Uniform predictions (zero weights) and equal feature mass: s_c ∝ B/C − k_c.
    labels = torch.tensor([0, 0, 0, 3, 5, 5])
    head = linear_head(8)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    x = torch.full((len(labels), 1, 1, 8), 0.5)
    estimate = recover_labels(observe(feature_model(head), x, labels, batch_size=len(labels)), "llg")
    assert torch.equal(estimate.counts, counts_of(labels))


def test_llg_pick_does_not_repick_the_first_class():
    # after stage 1 class 0 is still lowest once, then class 5 must win: a stale copy would give 0 four times
    scores = torch.tensor([-2.4, 0.6, 0.6, -0.4, 0.6, -1.4, 0.6, 0.6, 0.6, 0.6], dtype=torch.float64)
    counts = llg_pick(scores, scores < 0, impact=-0.77, batch_size=6)
    assert counts.tolist() == [3, 0, 0, 1, 0, 2, 0, 0, 0, 0]


def test_round_counts_keeps_the_sum_and_lower_bounds():
    real = torch.tensor([2.6, -0.3, 1.4, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert round_counts(real, 4).tolist() == [3, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert round_counts(real, 5).tolist() == [3, 0, 2, 0, 0, 0, 0, 0, 0, 0]  # 1.4 has the largest remainder
    assert round_counts(real, 3).tolist() == [2, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # 2.6 → 3 was the largest excess
    lower = torch.tensor([0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    assert round_counts(real, 4, lower=lower).tolist() == [2, 1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_lower_bounds_are_exact():
    # k_c ≥ ⌈−B ∇b_c⌉ holds for any batch; check it on a confident model
    torch.manual_seed(3)
    labels = torch.randint(0, C, (40,))
    obs = observe(feature_model(linear_head(16, scale=8.0)), torch.rand(40, 1, 1, 16), labels, batch_size=40)
    grad_bias = obs.named_gradient()["1.bias"]
    bound = present_at_least(grad_bias, 40)
    assert (bound <= counts_of(labels)).all() and bound.sum() > 0


def test_label_estimate_expands_counts_to_sorted_labels():
    estimate = LabelEstimate(counts=torch.tensor([2, 0, 1] + [0] * 7), scores=None, method="x")
    assert estimate.labels.tolist() == [0, 0, 2]
    assert estimate.batch_size == 3


def test_within_class_spread_removes_the_between_class_share():
    from gradleak.attacks.labels.ilrg_dummy import within_class_spread

    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(4000, C, generator=generator, dtype=torch.float64)
    spread = spread - spread.mean(dim=0)
    total = float((spread - spread.mean(dim=1, keepdim=True)).pow(2).sum(dim=1).mean())
    counts = torch.tensor([2.0, 2.0] + [0.0] * (C - 2))
    same = torch.zeros(C, C, dtype=torch.float64)
    assert torch.equal(within_class_spread(spread, same, counts), spread)  # no between-class part
    # two equally weighted class means ±d apart along a row-centred direction: between = |d|², so
    # a between share of 0.19 of the total leaves 0.9 of the spread's scale
    direction = torch.zeros(C, dtype=torch.float64)
    direction[0], direction[1] = 1.0, -1.0

    def means_with_share(share: float) -> torch.Tensor:
        d = direction * (share * total / float(direction.pow(2).sum())) ** 0.5
        means = torch.zeros(C, C, dtype=torch.float64)
        means[0], means[1] = d, -d
        return means

    assert torch.allclose(within_class_spread(spread, means_with_share(0.19), counts), 0.9 * spread)
    # a share past 1 − 0.8² (noisy class means, inputs narrower than the images) stops at scale 0.8
    for share in (0.75, 1.5):
        assert torch.allclose(within_class_spread(spread, means_with_share(share), counts), 0.8 * spread)


def synthetic_last_layer(labels: torch.Tensor, dim: int = 24, seed: int = 0):
    """A last layer with sigmoid features, its exact mean gradient for ``labels``, and dummy features."""
    from gradleak.attacks.labels.base import LastLayer

    generator = torch.Generator().manual_seed(seed)
    weight = 2.0 * torch.randn(C, dim, generator=generator, dtype=torch.float64) / dim**0.5
    bias = 0.1 * torch.randn(C, generator=generator, dtype=torch.float64)
    features = torch.sigmoid(torch.randn(len(labels), dim, generator=generator, dtype=torch.float64))
    signal = torch.softmax(features @ weight.T + bias, dim=1) - nn.functional.one_hot(labels, C).double()
    layer = LastLayer(weight, bias, signal.T @ features / len(labels), signal.mean(dim=0), "head")
    dummies = torch.sigmoid(torch.randn(256, dim, generator=generator, dtype=torch.float64))
    return layer, dummies


def test_instance_fit_is_exact_for_the_true_multiset_only():
    from gradleak.attacks.labels.factorise import fit_instances, row_space

    labels = torch.tensor([1, 3, 3, 7])
    layer, dummies = synthetic_last_layer(labels)
    factors = row_space(layer, len(labels))
    generator = torch.Generator().manual_seed(0)
    assert fit_instances(layer, factors, labels, dummies, generator) < 1e-8
    for wrong in ([1, 3, 7, 7], [3, 3, 3, 7], [1, 3, 3, 8]):
        assert fit_instances(layer, factors, torch.tensor(wrong), dummies, generator) > 1e-5


def test_factorised_counts_correct_a_one_sample_error():
    from gradleak.attacks.labels.factorise import factorised_counts

    labels = torch.tensor([0, 4, 4, 9])
    layer, dummies = synthetic_last_layer(labels, seed=1)
    start = counts_of(torch.tensor([0, 4, 9, 9]))
    real = start.double() + torch.tensor([0.0] * 4 + [0.3] + [0.0] * 4 + [-0.3])  # leaning towards the truth
    found = factorised_counts(layer, start, real, torch.zeros(C, dtype=torch.long), dummies)
    assert found is not None and torch.equal(found, counts_of(labels))


def test_factorisation_declines_what_it_cannot_explain():
    from gradleak.attacks.labels.factorise import factorisable, factorised_counts

    labels = torch.tensor([2, 5, 5, 6])
    layer, dummies = synthetic_last_layer(labels, seed=2)
    # a second local step's worth of change: no labelling fits exactly, so the counts stand as they are
    generator = torch.Generator().manual_seed(3)
    layer.grad_weight = layer.grad_weight + 0.05 * layer.grad_weight.norm() / 16 * torch.randn(layer.grad_weight.shape, generator=generator, dtype=torch.float64)
    assert factorised_counts(layer, counts_of(labels), counts_of(labels).double(), torch.zeros(C, dtype=torch.long), dummies) is None
    # over-determined by at least two: B ≤ (C − 1) / 2, and no more samples than feature dimensions
    assert [factorisable(b, C, 24) for b in (1, 2, 4, 5)] == [False, True, True, False]
    assert not factorisable(4, C, 3) and factorisable(49, 100, 512)


def test_instance_fit_works_with_as_many_features_as_samples():
    from gradleak.attacks.labels.factorise import factorised_counts, row_space

    labels = torch.tensor([1, 3, 3, 7])
    layer, dummies = synthetic_last_layer(labels, dim=4)  # ∇W has 4 singular values, none beyond B
    assert row_space(layer, 4) is not None
    found = factorised_counts(layer, counts_of(labels), counts_of(labels).double(), torch.zeros(C, dtype=torch.long), dummies)
    assert found is not None and torch.equal(found, counts_of(labels))


def test_decoding_follows_correlated_count_errors():
    from gradleak.attacks.labels.ilrg_dummy import decode_counts

    # the truth (2, 1, 1) seen through an error along (−1, −1, 2): class 2 over-counted at the
    # expense of classes 0 and 1. Rounding each class on its own lands a sample off; the
    # covariance that knows the error's direction finds the truth.
    real = torch.tensor([1.6, 0.6, 1.8] + [0.0] * (C - 3), dtype=torch.float64)
    direction = torch.tensor([-1.0, -1.0, 2.0] + [0.0] * (C - 3), dtype=torch.float64)
    covariance = torch.outer(direction, direction) + 0.01 * torch.eye(C, dtype=torch.float64)
    lower = torch.zeros(C, dtype=torch.long)
    assert not torch.equal(round_counts(real, 4, lower=lower)[:3], torch.tensor([2, 1, 1]))
    decoded = decode_counts(real, covariance, 4, lower)
    assert decoded.tolist() == [2, 1, 1] + [0] * (C - 3)
    # with independent errors it is plain rounding
    assert torch.equal(decode_counts(real, torch.eye(C, dtype=torch.float64), 4, lower), round_counts(real, 4, lower=lower))


def test_count_covariance_matches_the_counts_spread_under_batch_mean_noise():
    from gradleak.attacks.labels import ilrg_dummy as IL

    labels = torch.tensor([0, 0, 0, 2, 2, 5, 5, 5, 5, 7, 7, 9] * 2)
    layer, dummies = synthetic_last_layer(labels, seed=4)
    batch = len(labels)
    estimate = IL._refine(layer, batch, dummies)
    real, batch_mean = estimate.counts, estimate.batch_mean
    covariance = (IL.count_covariance(layer, batch, dummies, estimate) - IL.sampling_covariance(estimate.class_means, estimate.spread, real)
                  - IL._COUNT_NOISE_FLOOR**2 * torch.eye(C, dtype=torch.float64))
    # Monte Carlo: counts with ẑ drawn from its assumed distribution, N(ẑ, Cov(dummy logits) / B)
    generator = torch.Generator().manual_seed(0)
    sigma = torch.cov((dummies @ layer.weight.T).T) / batch
    draws = torch.randn(400, C, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(sigma).T
    at_mean = IL._refine(layer, batch, dummies, fixed_batch_mean=batch_mean, start=real).counts
    changes = torch.stack([IL._refine(layer, batch, dummies, fixed_batch_mean=batch_mean + d, start=at_mean).counts for d in draws]) - at_mean
    empirical = changes.T @ changes / len(draws)
    assert float(empirical.trace()) > 0.1  # ẑ matters here
    # sigma points against 400 draws: within 30 % of the largest variance entry by entry (measured: 26 %)
    assert torch.allclose(covariance, empirical, atol=0.3 * float(empirical.diagonal().max()))
    assert 0.8 < float(covariance.trace() / empirical.trace()) < 1.25
    # moving ẑ redistributes the batch among classes (the sum B holds by least squares, not exactly)
    assert float(covariance.sum(dim=1).abs().max()) < 0.1 * float(covariance.diagonal().max())


def test_sampling_covariance_matches_batches_drawn_from_the_spread():
    from gradleak.attacks.labels.ilrg_dummy import sampling_covariance

    generator = torch.Generator().manual_seed(0)
    class_means = 2.0 * torch.randn(C, C, generator=generator, dtype=torch.float64)
    spread = 1.5 * torch.randn(300, C, generator=generator, dtype=torch.float64)
    counts = torch.tensor([3.0, 0, 5, 1, 0, 0, 8, 0, 2, 1], dtype=torch.float64)
    # Monte Carlo: each of class j's k_j samples predicts softmax(u_j + ζ) with ζ drawn from the spread
    sums = []
    for _ in range(4000):
        total = torch.zeros(C, dtype=torch.float64)
        for j, k in enumerate(counts.long().tolist()):
            drawn = spread[torch.randint(len(spread), (k,), generator=generator)]
            total += torch.softmax(class_means[j] + drawn, dim=1).sum(dim=0)
        sums.append(total)
    empirical = torch.cov(torch.stack(sums).T)
    predicted = sampling_covariance(class_means, spread, counts)
    assert float(empirical.diagonal().max()) > 0.5  # the predictions do swing
    assert torch.allclose(predicted, empirical, atol=0.1 * float(empirical.diagonal().max()))
    assert float(predicted.sum(dim=1).abs().max()) < 1e-9  # probabilities sum to one: Σ_c P_c does not vary
    assert float(sampling_covariance(class_means, spread, torch.zeros(C, dtype=torch.float64)).abs().max()) == 0.0


# --- real models ---------------------------------------------------------------------------


def trained_lenet(digits, steps: int) -> nn.Module:
    model = build_model("lenet", digits.input_shape, C, seed=0)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y, _ = digits.sample_batch(64, generator)
        update = simulate_client(model, x, y, mean=digits.mean, std=digits.std)
        optimiser.zero_grad()
        for p, g in zip(model.parameters(), update.tensors):
            p.grad = g
        optimiser.step()
    return model


def test_feature_samples_are_reused_only_for_the_same_inputs(digits):
    from gradleak.attacks.labels.base import AuxData, sample_features

    model = build_model("lenet", digits.input_shape, C, seed=0)
    obs = observe(model, digits.images[:4], digits.labels[:4], mean=digits.mean, std=digits.std)
    public = AuxData(digits.images[100:300], digits.labels[100:300])
    dummies = sample_features(obs, 4, min_samples=64)
    assert sample_features(obs, 4, min_samples=64) is dummies
    from_public = sample_features(obs, 4, public, min_samples=64)
    assert from_public is not dummies and not torch.equal(from_public.features, dummies.features)
    assert sample_features(obs, 4, public, min_samples=64) is from_public
    copy_of_public = AuxData(public.images.clone(), public.labels)
    again = sample_features(obs, 4, copy_of_public, min_samples=64)
    assert again is not from_public and torch.equal(again.features, from_public.features)
    assert sample_features(obs, 4, min_samples=64) is dummies  # the dummies' entry is still there


def test_feature_samples_are_shared_by_observations_of_the_same_model_only(digits):
    from gradleak.attacks.labels.base import model_fingerprint, sample_features

    model = build_model("lenet", digits.input_shape, C, seed=0)
    first = observe(model, digits.images[:4], digits.labels[:4], mean=digits.mean, std=digits.std)
    second = observe(model, digits.images[4:8], digits.labels[4:8], mean=digits.mean, std=digits.std)
    assert first.model is not second.model  # each observation holds its own copy of θ
    dummies = sample_features(first, 4, min_samples=64)
    assert sample_features(second, 4, min_samples=64) is dummies  # a sweep computes them once per batch size
    fingerprint = model_fingerprint(second.model)
    with torch.no_grad():
        next(second.model.parameters()).add_(1e-3)
    assert model_fingerprint(second.model) != fingerprint
    moved = sample_features(second, 4, min_samples=64)
    assert moved is not dummies and not torch.equal(moved.features, dummies.features)
    second.model.eval()
    assert model_fingerprint(second.model) != model_fingerprint(copy.deepcopy(second.model).train())


@pytest.mark.parametrize("steps", [0, 20])
def test_idlg_exact_on_real_lenet_untrained_and_trained(digits, steps):
    model = trained_lenet(digits, steps)
    for i in range(8):
        x, y = digits.images[i : i + 1], digits.labels[i : i + 1]
        obs = observe(model, x, y, batch_size=1, mean=digits.mean, std=digits.std)
        assert recover_labels(obs, "idlg").labels.tolist() == y.tolist()


@pytest.mark.parametrize("batch_size", [1, 4, 24])
def test_counts_sum_to_batch_size_for_every_method(digits, batch_size):
    model = build_model("lenet", digits.input_shape, C, seed=1)
    x, y, _ = digits.sample_batch(batch_size, torch.Generator().manual_seed(batch_size))
    obs = observe(model, x, y, batch_size=batch_size, mean=digits.mean, std=digits.std)
    aux = AuxData(images=digits.images[-32:])
    for method in LABEL_STRATEGIES:
        if (method == "idlg" and batch_size > 1) or (method == "yin" and batch_size > C):
            continue
        estimate = recover_labels(obs, method, aux)
        assert estimate.counts.dtype == torch.int64 and (estimate.counts >= 0).all()
        assert int(estimate.counts.sum()) == batch_size, method
        assert estimate.labels.shape == (batch_size,) and estimate.method == method


@pytest.mark.parametrize("model_name,width", [("lenet", None), ("convnet", 8)])
def test_default_method_is_accurate_at_batch_16_on_digits(digits, model_name, width):
    model = build_model(model_name, digits.input_shape, C, width=width, seed=0)
    model.train()
    generator = torch.Generator().manual_seed(0)
    accuracies = []
    for _ in range(6):
        x, y, _ = digits.sample_batch(16, generator)
        obs = observe(model, x, y, batch_size=16, mean=digits.mean, std=digits.std)
        accuracies.append(accuracy(recover_labels(obs), y))
    assert sum(accuracies) / len(accuracies) >= 0.95


def test_fedavg_single_step_reads_like_fedsgd(digits):
    model = build_model("lenet", digits.input_shape, C, seed=0)
    x, y, _ = digits.sample_batch(16, torch.Generator().manual_seed(5))
    sgd = recover_labels(observe(model, x, y, batch_size=16, mean=digits.mean, std=digits.std), "ilrg")
    avg = recover_labels(
        observe(model, x, y, batch_size=16, mean=digits.mean, std=digits.std, config=UpdateConfig("fedavg", 1, 0.01)),
        "ilrg",
    )
    assert torch.equal(sgd.counts, avg.counts)


# --- bad input -----------------------------------------------------------------------------


def test_methods_refuse_what_they_cannot_do():
    x = torch.rand(12, 1, 1, 8)
    labels = torch.arange(12) % C
    with_bias = observe(feature_model(linear_head(8)), x, labels, batch_size=12)
    no_bias = observe(feature_model(linear_head(8, bias=False)), x, labels, batch_size=12)
    with pytest.raises(ConfigError, match="single label"):
        recover_labels(with_bias, "idlg")
    with pytest.raises(ConfigError, match="at most 10"):
        recover_labels(with_bias, "yin")
    for method in ("ilrg", "ilrg-dummy"):
        with pytest.raises(ConfigError, match="needs a bias"):
            recover_labels(no_bias, method)
    with pytest.raises(ConfigError, match="unknown label strategy"):
        recover_labels(with_bias, "nope")
    with pytest.raises(ConfigError, match="batch size"):
        recover_labels(observe(feature_model(linear_head(8)), x, labels, threat=ThreatModel(knows_batch_size=False)), "llg")
    with pytest.raises(ConfigError, match="auxiliary images"):
        recover_labels(with_bias, "llg+", AuxData(images=torch.rand(4, 3, 8, 8)))


def test_default_method_is_registered():
    assert DEFAULT_METHOD in LABEL_STRATEGIES
    assert set(LABEL_STRATEGIES) >= {"idlg", "yin", "llg", "llg+", "llg*", "geng", "ilrg"}


def test_public_label_aux_reaches_the_strategy_and_the_sweep(monkeypatch):
    from gradleak.studies import label_sweep as sweep
    from gradleak.attacks.labels.base import LABEL_STRATEGIES as strategies
    from gradleak.data import load_dataset

    seen = []

    def spy(obs, aux=None):
        seen.append(aux)
        return recover_labels(obs, DEFAULT_METHOD, aux)

    monkeypatch.setitem(strategies._items, "spy", spy)
    cfg = sweep.LabelSweepConfig.of(dataset="digits", model="lenet", batch_sizes=[8], trials=2, methods=["spy"],
                                    label_aux="public")
    rows = sweep.run_label_sweep(cfg, progress=False)
    public = load_dataset("digits", "train")
    assert len(seen) == 2 and all(a is not None and a.images.shape == public.images.shape for a in seen)
    assert all(r["accuracy"] is not None for r in rows)
    with pytest.raises(ConfigError, match="label_aux"):
        sweep.run_label_sweep(sweep.LabelSweepConfig.of(dataset="digits", model="lenet", batch_sizes=[8], trials=1,
                                                        label_aux="private"), progress=False)


def test_attack_pipeline_hands_public_images_to_label_recovery(monkeypatch):
    import gradleak.attacks.labels as labels_module
    from gradleak.config import AttackConfig
    from gradleak.studies.attack import run_attack

    seen = []
    real = labels_module.recover_labels

    def spy(obs, method=DEFAULT_METHOD, aux=None):
        seen.append(aux)
        return real(obs, method, aux)

    monkeypatch.setattr(labels_module, "recover_labels", spy)
    result = run_attack(AttackConfig.of(iterations=2, label_aux="public"), progress=False)
    assert len(seen) == 1 and seen[0] is not None and seen[0].images.shape[1:] == (1, 8, 8)
    assert result.summary["label_method"] == DEFAULT_METHOD


def test_model_fingerprint_reads_extra_state():
    from gradleak.attacks.labels.base import model_fingerprint

    class Tagged(nn.Linear):
        tag = "a"

        def get_extra_state(self):
            return {"tag": self.tag}

        def set_extra_state(self, state):
            self.tag = state["tag"]

    model = Tagged(3, 2)
    before = model_fingerprint(model)
    model.tag = "b"
    assert model_fingerprint(model) != before


@pytest.mark.parametrize("label", [0, 3, C - 1])
def test_ilrg_dummy_names_the_label_of_a_saturated_single_sample(label):
    # p_y = 1.0 exactly in float32: ∇b_y = 0 and every other class's ∇b is a tiny positive number,
    # so no exact lower bound fixes the count; the one non-positive entry is the label (iDLG).
    head = linear_head(8, seed=label)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[label] = 60.0
    x = torch.rand(1, 1, 8)
    y = torch.tensor([label])
    obs = observe(feature_model(head), x, y, batch_size=1)
    grad_bias = obs.named_gradient()["1.bias"]
    assert grad_bias[label] == 0 and (grad_bias[torch.arange(C) != label] > 0).all()
    estimate = LABEL_STRATEGIES.get("ilrg-dummy")(obs)
    assert accuracy(estimate, y) == 1.0
