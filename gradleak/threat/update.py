"""What a client sends back: a FedSGD gradient or a FedAvg weight delta, and how to simulate it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from ..errors import ConfigError, UpdateError, is_int_at_least
from ..models import normalize_input

UpdateKind = Literal["fedsgd", "fedavg"]


@dataclass
class ClientUpdate:
    """One client's update, one tensor per model parameter, in ``model.named_parameters()`` order.

    ``fedsgd``: ``tensors`` is the gradient of the mean cross-entropy over the client's batch.
    ``fedavg``: ``tensors`` is ``θ_K − θ_0`` after ``local_steps`` SGD steps of size ``lr``.
    """

    kind: UpdateKind
    names: list[str]
    tensors: list[torch.Tensor]
    local_steps: int = 1
    lr: float | None = None
    local_batch_size: int | None = None
    # Per BN layer, (mean, biased var) of its input on the client's (first) batch: what a client
    # that returns its updated BN buffers reveals. Only a threat model granting it passes it on.
    bn_stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def as_gradient(self, lr: float | None = None, local_steps: int | None = None) -> list[torch.Tensor]:
        """The update read as a gradient: itself for FedSGD, ``−Δ / (K η)`` for FedAvg.

        ``lr``/``local_steps`` override the recorded schedule (the threat model may not grant it;
        with no schedule known, ``−Δ`` is returned, which only matters up to scale for cosine
        matching and label recovery).
        """
        if self.kind == "fedsgd":
            return list(self.tensors)
        eta = lr if lr is not None else self.lr
        steps = local_steps if local_steps is not None else self.local_steps
        scale = 1.0 / (eta * steps) if eta else 1.0
        return [-t * scale for t in self.tensors]

    def validate(self, model: nn.Module) -> None:
        """Raise UpdateError unless the update has one finite tensor per parameter of ``model``."""
        params = [(n, p) for n, p in model.named_parameters()]
        if len(params) != len(self.tensors):
            raise UpdateError(
                f"update has {len(self.tensors)} tensors but the model has {len(params)} parameters; "
                "the model does not match the update"
            )
        for (name, p), t in zip(params, self.tensors):
            if tuple(p.shape) != tuple(t.shape):
                raise UpdateError(
                    f"update tensor for {name!r} has shape {tuple(t.shape)}, the model expects "
                    f"{tuple(p.shape)}; the model does not match the update"
                )
            if not torch.isfinite(t).all():
                raise UpdateError(f"update tensor for {name!r} contains NaN or inf")


@dataclass
class UpdateConfig:
    """How the simulated client computes its update."""

    kind: UpdateKind = "fedsgd"
    local_steps: int = 1
    lr: float = 0.1
    local_batch_size: int | None = None  # None: every local step uses the whole batch

    def __post_init__(self) -> None:
        if self.kind not in ("fedsgd", "fedavg"):
            raise ConfigError(f"unknown update {self.kind!r}; choose fedsgd or fedavg")
        if not is_int_at_least(self.local_steps, 1):
            raise ConfigError(f"local steps must be a positive integer, got {self.local_steps!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < float("inf")):
            raise ConfigError(f"the client's local learning rate must be positive and finite, got {self.lr!r}")
        if self.local_batch_size is not None and not is_int_at_least(self.local_batch_size, 1):
            raise ConfigError(f"local batch size must be a positive integer or None, got {self.local_batch_size!r}")


def fedsgd_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean=None, std=None) -> list[torch.Tensor]:
    """``∇θ (1/B) Σ CE(f(x_i), y_i)`` with the model in its current train/eval mode."""
    params = [p for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(normalize_input(x, mean, std)), y)
    return [g.detach() for g in torch.autograd.grad(loss, params)]


def batch_bn_stats(model: nn.Module, x: torch.Tensor, mean=None, std=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mean, biased variance) of every BatchNorm layer's input for batch ``x``."""
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module, inputs, _output):
        h = inputs[0].detach()
        dims = [0] + list(range(2, h.dim()))
        stats.append((h.mean(dims), h.var(dims, unbiased=False)))

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            model(normalize_input(x, mean, std))
    finally:
        for h in handles:
            h.remove()
    return stats


def simulate_client(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: UpdateConfig = UpdateConfig(),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> ClientUpdate:
    """Compute the update an honest client would send for its private batch ``(x, y)``.

    ``x`` is in pixel space [0, 1]; ``mean``/``std`` are the client's input normalisation.
    The model is not modified (the client works on a private copy).
    """
    names = [n for n, _ in model.named_parameters()]
    if config.kind not in ("fedsgd", "fedavg"):
        raise UpdateError(f"unknown update kind {config.kind!r}; choose fedsgd or fedavg")
    # The client trains its own copy: BN running statistics of the server's model stay as sent.
    local = copy.deepcopy(model)
    first = x if not config.local_batch_size else x[: config.local_batch_size]
    bn_stats = batch_bn_stats(copy.deepcopy(model), first, mean, std) or None
    if config.kind == "fedsgd":
        return ClientUpdate("fedsgd", names, fedsgd_gradient(local, x, y, mean, std), bn_stats=bn_stats)
    start = [p.detach().clone() for p in local.parameters()]
    n = x.shape[0]
    mb = config.local_batch_size or n
    order = torch.arange(n)
    for step in range(config.local_steps):
        if mb < n:
            first = (step * mb) % n
            if first == 0 and step > 0:
                order = torch.randperm(n, generator=generator)
            idx = order[first : first + mb]
        else:
            idx = order
        grads = fedsgd_gradient(local, x[idx], y[idx], mean, std)
        with torch.no_grad():
            for p, g in zip(local.parameters(), grads):
                p.sub_(config.lr * g)
    delta = [(p.detach() - s) for p, s in zip(local.parameters(), start)]
    return ClientUpdate("fedavg", names, delta, config.local_steps, config.lr, config.local_batch_size, bn_stats)
