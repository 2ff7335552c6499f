"""DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS): each example's
gradient clipped to norm C, Gaussian noise N(0, σ²C² I) added to their sum, divided by the batch size.

Privacy spent is reported with Opacus's RDP accountant (Mironov 2017): noise multiplier σ, sample
rate q = B / N (the step's batch over the client's data), one step per local step. The accountant
assumes Poisson sampling; the simulated client draws fixed-size batches, so ε is the usual nominal
DP-SGD figure, not a proof about this simulation.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .base import DEFENSES, Defense, GradientFn, Param, Tensors, clip_to_norm, gaussian_like


def dp_epsilon(sigma: float, sample_rate: float, steps: int, delta: float) -> float | None:
    """ε of ``steps`` subsampled Gaussian steps at (σ, q) for ``delta``; None when σ = 0 (no bound)."""
    if sigma == 0:
        return None
    try:
        from opacus.accountants import RDPAccountant
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("opacus"):
            raise
        raise ConfigError("dp-sgd reports its privacy (ε, δ) with Opacus's accountant: "
                          "pip install 'gradleak[dp]'") from None

    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=sample_rate)
    # Opacus's default RDP orders start at 1.1; at tiny σ the best order lies below it (Opacus then
    # warns that the bound is loose), so orders down to 1.001 are added. Where the default's best
    # order is above 1.1 the answer is Opacus's default one, unchanged.
    low_orders = [1 + x / 1000 for x in range(1, 100)]
    return float(accountant.get_epsilon(delta, alphas=low_orders + list(accountant.DEFAULT_ALPHAS)))


@DEFENSES.register("dp-sgd")
class DPSGD(Defense):
    """``(1/B)(Σ_i g_i / max(1, ‖g_i‖₂/C) + N(0, σ²C² I))`` for each local step's mini-batch."""

    name = "dp-sgd"
    stage = "step"
    params = {"C": Param(float, low=0.0), "sigma": Param(float, low=0.0, low_open=False),
              "delta": Param(float, 1e-5, low=0.0, high=1.0, high_open=True)}

    def wrap(self, gradient: GradientFn, generator: torch.Generator) -> GradientFn:
        C, sigma = self.values["C"], self.values["sigma"]

        def private_gradient(x: torch.Tensor, y: torch.Tensor) -> Tensors:
            total: Tensors | None = None
            # One backward pass per example: exact for any module (BatchNorm in eval mode included),
            # and a client's batch is small.
            for i in range(x.shape[0]):
                g = clip_to_norm(gradient(x[i : i + 1], y[i : i + 1]), C)
                total = g if total is None else [a + b for a, b in zip(total, g)]
            assert total is not None, "an empty batch has no gradient"
            if sigma > 0:
                total = [t + n for t, n in zip(total, gaussian_like(total, sigma * C, generator))]
            return [t / x.shape[0] for t in total]

        return private_gradient

    def record(self, *, sample_rate: float, steps: int) -> dict[str, Any]:
        eps = dp_epsilon(self.values["sigma"], sample_rate, steps, self.values["delta"])
        # epsilon null: σ = 0 gives no finite bound (result.json admits no Infinity).
        return {**super().record(sample_rate=sample_rate, steps=steps), "sample_rate": sample_rate,
                "steps": steps, "epsilon": eps, "accountant": "opacus.RDPAccountant"}
