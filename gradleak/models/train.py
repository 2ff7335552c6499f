"""Optionally train the victim before the attack: trained and untrained models leak differently."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, is_int_at_least
from . import normalize_input


def train_victim(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    mean=None,
    std=None,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Train ``model`` in place for ``steps`` SGD steps (momentum 0.9) on public ``images``."""
    if not is_int_at_least(steps, 0):
        raise ConfigError(f"training steps must be a non-negative integer, got {steps!r}")
    if steps == 0:
        return model
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    n, device = images.shape[0], next(model.parameters()).device
    for _ in tqdm(range(steps), disable=not progress, desc="training victim", leave=False):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)  # CPU draws: the same batches anywhere
        xb, yb = images[idx].to(device), labels[idx].to(device)
        loss = nn.functional.cross_entropy(model(normalize_input(xb, mean, std)), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model
