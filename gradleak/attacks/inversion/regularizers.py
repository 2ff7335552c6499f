"""Image priors added to the matching loss. Each is one class plus one registry entry.

A regulariser is built once per attack with the :class:`~gradleak.threat.Observation` and the
attacker's model (so it can hook layers), then called on the current images after each forward.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from ...errors import ConfigError
from ...registry import Registry
from ...threat import Observation


class Regularizer(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


REGULARIZERS: Registry[Callable[..., Regularizer]] = Registry("regulariser")


def lazy_weight(weight: float, every: int, step: int | None) -> float | None:
    """The weight of a term evaluated only every ``every``-th step ("lazy regularisation", Karras et
    al. 2020, StyleGAN2 §3.1) at optimisation step ``step``: None (skip it) off those steps, ``weight ×
    every`` on them, so its mean pull over ``every`` steps is the every-step one; ``weight`` itself
    when ``every`` is 1 or outside the optimisation (``step`` None: scoring)."""
    if every == 1 or step is None:
        return weight
    return None if step % every else weight * every


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation, ``mean|∂_h x| + mean|∂_w x|`` (Rudin et al. 1992; as used by
    Geiping et al. 2020)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dh + dw


@REGULARIZERS.register("tv")
class TotalVariation:
    """Total-variation prior on the reconstructed pixels."""

    def __init__(self, observation: Observation, model: nn.Module, **_):
        pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return total_variation(x)


@REGULARIZERS.register("bn_stats")
class BatchNormStatistics:
    """BN-statistics prior (Yin et al., "See through Gradients", CVPR 2021):
    ``Σ_l ||μ_l(x') − μ_l^run||₂ + ||σ²_l(x') − σ²_l^run||₂`` over BatchNorm layers.

    Reads the statistics of each BN layer's input during the forward pass through hooks. The
    targets are the client batch's own statistics when the threat model grants them, else the
    global model's running statistics (Yin et al.'s prior; informative only for a trained model).
    """

    def __init__(self, observation: Observation, model: nn.Module, **_):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ConfigError("the bn_stats prior needs a model with BatchNorm layers")
        if observation.bn_stats is not None:
            if len(observation.bn_stats) != len(self.layers):
                raise ConfigError(f"{len(observation.bn_stats)} granted BN statistics for {len(self.layers)} BN layers")
            self.targets = [(m.float(), v.float()) for m, v in observation.bn_stats]
        else:
            self.targets = [(m.running_mean.detach().clone(), m.running_var.detach().clone()) for m in self.layers]
        self._index = {id(m): i for i, m in enumerate(self.layers)}
        self._terms: list[torch.Tensor] = []
        for layer in self.layers:
            layer.momentum = 0.0  # the attacker's train-mode forwards must not drift the granted statistics
            layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, _output):
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        target_mean, target_var = self.targets[self._index[id(module)]]
        self._terms.append(torch.linalg.vector_norm(mean - target_mean) + torch.linalg.vector_norm(var - target_var))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # The hooks have collected one term per BN layer during the latest forward pass.
        terms, self._terms = self._terms, []
        if not terms:
            return x.new_zeros(())
        return torch.stack(terms[-len(self.layers):]).sum()
