"""The guidance benchmarks' victims (``guide_robustness``, ``guide_every_quality``): one held-out
image at a time, a fresh untrained victim per trial, labels recovered from its update."""

from __future__ import annotations

import torch


def held_out_order(test, images: int) -> list[int]:
    """The first ``images`` of a fixed random order of the held-out split (the same in every benchmark)."""
    return torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:images].tolist()


def single_image_attack_input(test, index: int, trial: int, model_name: str):
    """``(x, y, observation, label estimate)`` for held-out image ``index``, victim seeded by ``trial``."""
    from gradleak.attacks.labels import recover_labels
    from gradleak.models import build_model
    from gradleak.threat import ThreatModel, simulate_client

    x, y = test.images[index : index + 1], test.labels[index : index + 1]
    model = build_model(model_name, test.input_shape, test.num_classes, seed=trial).train()
    update = simulate_client(model, x, y, mean=test.mean, std=test.std)
    obs = ThreatModel().observe(model, update, test.input_shape, test.num_classes, test.mean, test.std,
                                batch_size=1, class_names=test.class_names)
    return x, y, obs, recover_labels(obs)
