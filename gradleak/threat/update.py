"""What a client sends back: a FedSGD gradient or a FedAvg weight delta, and how to simulate it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import torch
from torch import nn

from ..defenses import Defense, apply_defenses, wrap_gradient
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
    # What the client applied, in order (``Defense.record``: name, parameters, ε for DP-SGD);
    # None: an undefended or recorded update. The threat model passes it on only with
    # ``knows_defense`` (``Observation.defenses``); otherwise the attacker is not told.
    defenses: list[dict] | None = None

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

    def gradient_scale(self) -> float | None:
        """How the update's units map to gradient units (a clip bound C on the update is C times this
        on the gradient): 1 for FedSGD, ``1/(K η)`` for FedAvg, None when η was not recorded."""
        if self.kind == "fedsgd":
            return 1.0
        return 1.0 / (self.lr * self.local_steps) if self.lr else None

    def to(self, device: str | torch.device) -> "ClientUpdate":
        """A copy with the tensors and BN statistics on ``device`` (itself when all are there)."""
        device = torch.device(device)
        stats = [t for pair in self.bn_stats or () for t in pair]
        if all(t.device == device for t in [*self.tensors, *stats]):
            return self
        bn = None if self.bn_stats is None else [(m.to(device), v.to(device)) for m, v in self.bn_stats]
        return replace(self, tensors=[t.to(device) for t in self.tensors], bn_stats=bn)

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
    defenses: Sequence[Defense] = (),
    defense_generator: torch.Generator | None = None,
    data_size: int | None = None,
) -> ClientUpdate:
    """Compute the update an honest client would send for its private batch ``(x, y)``.

    ``x`` is in pixel space [0, 1]; ``mean``/``std`` are the client's input normalisation.
    The model is not modified (the client works on a private copy). ``generator`` reshuffles
    FedAvg mini-batches (None: the global RNG, as before defences existed).

    ``defenses`` (see :mod:`gradleak.defenses`) apply in order: per-example ones (dp-sgd) inside
    every gradient computation — the FedSGD gradient, each FedAvg local step — and the others on
    the finished update. Their noise and rounding draw from ``defense_generator`` (None: one seeded
    with 0), never the global RNG. ``data_size`` is N of the client's data for DP accounting's
    sample rate (step batch / N); default: the batch itself.
    """
    names = [n for n, _ in model.named_parameters()]
    if config.kind not in ("fedsgd", "fedavg"):
        raise UpdateError(f"unknown update kind {config.kind!r}; choose fedsgd or fedavg")
    _check_per_example(model, defenses)
    noise = defense_generator if defense_generator is not None else torch.Generator().manual_seed(0)
    # The client trains its own copy: BN running statistics of the server's model stay as sent.
    local = copy.deepcopy(model)
    first = x if not config.local_batch_size else x[: config.local_batch_size]
    bn_stats = batch_bn_stats(copy.deepcopy(model), first, mean, std) or None
    gradient = wrap_gradient(defenses, lambda xb, yb: fedsgd_gradient(local, xb, yb, mean, std), noise)
    n = x.shape[0]
    if config.kind == "fedsgd":
        update = ClientUpdate("fedsgd", names, gradient(x, y), bn_stats=bn_stats)
        return _defend(update, defenses, noise, n, 1, data_size)
    start = [p.detach().clone() for p in local.parameters()]
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
        grads = gradient(x[idx], y[idx])
        with torch.no_grad():
            for p, g in zip(local.parameters(), grads):
                p.sub_(config.lr * g)
    delta = [(p.detach() - s) for p, s in zip(local.parameters(), start)]
    update = ClientUpdate("fedavg", names, delta, config.local_steps, config.lr, config.local_batch_size, bn_stats)
    return _defend(update, defenses, noise, min(mb, n), config.local_steps, data_size)


def _check_per_example(model: nn.Module, defenses: Sequence[Defense]) -> None:
    step = [d.name for d in defenses if d.stage == "step"]
    bn_train = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    if step and bn_train:  # batch statistics mix the examples: no per-example gradient exists
        raise ConfigError(f"defense {step[0]} needs per-example gradients, which BatchNorm in train mode mixes "
                          "across the batch: use client mode eval")


def _defend(update: ClientUpdate, defenses: Sequence[Defense], noise: torch.Generator, step_batch: int, steps: int,
            data_size: int | None) -> ClientUpdate:
    """``update`` after the update-stage defences, with the record of every defence applied."""
    if not defenses:
        return update
    update.tensors = apply_defenses(defenses, list(update.tensors), noise)
    rate = min(1.0, step_batch / (data_size or step_batch))
    update.defenses = [d.record(sample_rate=rate, steps=steps) for d in defenses]
    return update
