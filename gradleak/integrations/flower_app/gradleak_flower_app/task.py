"""The task both sides share: the model, and each client's deterministic private data."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import torch

from gradleak.data import load_dataset
from gradleak.data.dataset import ImageDataset
from gradleak.integrations.weights import TaskSpec


def task_spec(run_config: Mapping[str, Any]) -> TaskSpec:
    return TaskSpec.from_dataset(str(run_config["dataset"]), str(run_config["model"]),
                                 data_dir=str(run_config.get("data-dir") or "") or None)


@lru_cache(maxsize=4)
def _dataset(name: str, split: str, data_dir: str | None) -> ImageDataset:
    return load_dataset(name, split, data_dir)


def client_batch(
    dataset: str, partition_id: int, num_partitions: int, server_round: int, batch_size: int,
    seed: int = 0, data_dir: str | None = None, split: str = "train",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``partition_id``'s private batch in ``server_round``: a fresh draw from its shard.

    Shard p holds the images whose index ≡ p (mod num_partitions); the draw depends only on
    (seed, partition, round), so a test can recompute what a client trained on.
    """
    data = _dataset(dataset, split, data_dir)
    shard = torch.arange(partition_id, len(data), num_partitions)
    gen = torch.Generator().manual_seed(1_000_003 * seed + 10_007 * partition_id + server_round)
    pick = shard[torch.randperm(len(shard), generator=gen)[:batch_size]]
    return data.images[pick].clone(), data.labels[pick].clone()


def normalize(x: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    if spec.mean is None or spec.std is None:
        return x
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (x - mean) / std
