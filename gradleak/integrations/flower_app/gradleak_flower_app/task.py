"""The task both sides share: the model, each client's deterministic private data, and the server's
attack config, all read from the run config.

Run-config keys that are gradleak options use the option's own name with dashes (``batch-size``,
``local-lr``); ``""`` stands for the option's default (a TOML value cannot be null).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import torch

from gradleak.config import OPTIONS, AttackConfig
from gradleak.data import load_dataset
from gradleak.data.dataset import ImageDataset
from gradleak.integrations.weights import TaskSpec


def option(run_config: Mapping[str, Any], key: str) -> Any:
    """The run config's value of gradleak option ``key`` (dashed), ``""`` and absent read as None."""
    value = run_config.get(key)
    return None if value == "" else value


def options(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Every gradleak option the run config sets (keys with dashes, as Flower writes them)."""
    return {key: option(run_config, key) for key in run_config if key.replace("-", "_") in OPTIONS}


def attack_config(run_config: Mapping[str, Any]) -> AttackConfig:
    """The server's AttackConfig: the run config's options; the clients train in train mode (client_app)."""
    return AttackConfig.from_dict({**options(run_config), "client_mode": "train"})


def task_spec(run_config: Mapping[str, Any]) -> TaskSpec:
    width = option(run_config, "width")
    return TaskSpec.from_dataset(str(run_config["dataset"]), str(run_config["model"]),
                                 width=int(width) if width is not None else None,
                                 data_dir=option(run_config, "data-dir"))


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


def local_sgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, batch: int,
              shuffle: torch.Generator) -> float:
    """The client's local training, in place: ``steps`` plain SGD steps over epochs of ⌈n/b⌉ mini-batches
    of ``batch`` (the last one shorter when b does not divide n), reshuffled by ``shuffle`` at every
    epoch as ``DataLoader(shuffle=True)`` does; one step on the whole batch is FedSGD. ``x`` is
    normalised. Returns the last step's loss."""
    n = len(x)
    b = min(int(batch), n)
    per_epoch = -(-n // b)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order, loss = torch.arange(n), torch.tensor(float("nan"))
    for step in range(int(steps)):
        i = step % per_epoch
        if i == 0 and b < n:  # a new epoch: a permutation only the client knows
            order = torch.randperm(n, generator=shuffle)
        idx = order[i * b:(i + 1) * b]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    return float(loss.detach())


def normalize(x: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    if spec.mean is None or spec.std is None:
        return x
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return (x - mean) / std
