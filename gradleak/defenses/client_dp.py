"""Client-level DP: clip the whole update and add Gaussian noise (DP-FedAvg, McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models", ICLR; Flower's client-side fixed clipping).

No (ε, δ) is reported: client-level accounting depends on how the server samples clients over
rounds, which one client's update does not determine.
"""

from __future__ import annotations

import torch

from .base import DEFENSES, Defense, Param, Tensors, clip_to_norm, gaussian_like


@DEFENSES.register("client-dp")
class ClientDP(Defense):
    """``Δ / max(1, ‖Δ‖₂ / C) + N(0, σ²C² I)``."""

    name = "client-dp"
    params = {"C": Param(float, low=0.0), "sigma": Param(float, low=0.0, low_open=False)}

    def apply(self, tensors: Tensors, generator: torch.Generator) -> Tensors:
        C, sigma = self.values["C"], self.values["sigma"]
        clipped = clip_to_norm(tensors, C)
        if sigma == 0:
            return clipped
        return [t + n for t, n in zip(clipped, gaussian_like(clipped, sigma * C, generator))]
