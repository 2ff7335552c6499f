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

    Reads the statistics of each BN layer's input during the forward pass through hooks, and
    needs the running statistics, which only a threat model granting them provides.
    """

    def __init__(self, observation: Observation, model: nn.Module, **_):
        if not observation.bn_stats_known:
            raise ConfigError("the bn_stats prior needs BN running statistics, which the threat model does not grant")
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ConfigError("the bn_stats prior needs a model with BatchNorm layers")
        self._terms: list[torch.Tensor] = []
        for layer in self.layers:
            layer.momentum = 0.0  # the attacker's train-mode forwards must not drift the granted statistics
            layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, _output):
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        self._terms.append(
            torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(var - module.running_var)
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # The hooks have collected one term per BN layer during the latest forward pass.
        terms, self._terms = self._terms, []
        if not terms:
            return x.new_zeros(())
        return torch.stack(terms[-len(self.layers):]).sum()
