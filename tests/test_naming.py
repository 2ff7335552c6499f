"""Naming through the label map pooled over R observed batches (Malcewicz et al. 2025, aggregation)."""

from types import SimpleNamespace

import pytest
import torch

from gradleak.config import AttackConfig
from gradleak.studies.attack import run_attack
from gradleak.studies.naming import name_batches

NAMES = [f"class{i}" for i in range(10)]


class NoisyLabeller:
    """A weak labeller: the true class's probability is raised by ``signal`` over Dirichlet noise."""

    def __init__(self, signal: float, generator: torch.Generator):
        self.signal, self.gen = signal, generator

    def probabilities(self, images, names):
        truth = images[:, 0, 0, 0].long()  # the fake reconstructions carry their class in a pixel
        noise = -torch.log(torch.rand(len(truth), len(names), generator=self.gen))
        table = noise / noise.sum(1, keepdim=True)
        table[torch.arange(len(truth)), truth] += self.signal
        return table / table.sum(1, keepdim=True)


def _outcome(labels: torch.Tensor):
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return SimpleNamespace(labels=labels, reconstruction=SimpleNamespace(images=images, restart_images=[images]))


def _map_accuracy(batches: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    side = SimpleNamespace(labeller=NoisyLabeller(0.15, gen), class_names=NAMES)
    outcomes = [_outcome(torch.randint(0, 10, (4,), generator=gen)) for _ in range(batches)]
    naming = name_batches(side, outcomes, 10)
    seen = naming.indices_seen
    return sum(naming.label_map[i] == i for i in seen) / len(seen)


def test_the_label_map_improves_with_the_batches_observed():
    one = sum(_map_accuracy(1, s) for s in range(40)) / 40
    ten = sum(_map_accuracy(10, s) for s in range(40)) / 40
    assert ten > one + 0.2 and ten > 0.8, (one, ten)


def test_names_through_the_map_can_differ_from_each_images_top1():
    gen = torch.Generator().manual_seed(0)
    side = SimpleNamespace(labeller=NoisyLabeller(0.15, gen), class_names=NAMES)
    outcomes = [_outcome(torch.randint(0, 10, (8,), generator=gen)) for _ in range(10)]
    naming = name_batches(side, outcomes, 10)
    truth = outcomes[0].labels.tolist()
    top1_right = sum(a == b for a, b in zip(naming.top1, truth))
    mapped_right = sum(a == b for a, b in zip(naming.by_label_map, truth))
    assert mapped_right > top1_right


def test_several_batches_keep_the_first_batchs_numbers(tmp_path):
    common = dict(iterations=5, batch_size=2, labeler="classifier", classifier_steps=5)
    single = run_attack(AttackConfig.of(**common), progress=False).summary
    pooled = run_attack(AttackConfig.of(batches=3, **common), progress=False).summary
    for key in ("true_labels", "recovered_labels", "ssim", "semantic_accuracy", "semantic_labels"):
        assert single[key] == pooled[key], key
    assert single["semantic_batches"] == 1 and pooled["semantic_batches"] == 3
    assert 0.0 <= pooled["label_map_accuracy"] <= 1.0 and pooled["label_map_indices_seen"] >= 1
    assert {"semantic_accuracy_aggregated", "semantic_accuracy_known_map"} <= set(pooled)
    # the first R batches of a longer run give the R-batch numbers (one run, the whole curve)
    for key in ("label_map_accuracy", "semantic_accuracy_aggregated"):
        assert pooled[f"{key}_R1"] == single[key] and pooled[f"{key}_R3"] == pooled[key]


def test_a_recorded_update_is_one_batch_and_batches_need_a_labeller():
    from gradleak.errors import ConfigError

    with pytest.raises(ConfigError, match="one batch"):
        run_attack(AttackConfig.of(batches=2, labeler="classifier", observed_update=__file__), progress=False)
    with pytest.raises(ConfigError, match="choose --labeler"):
        run_attack(AttackConfig.of(batches=2), progress=False)
