"""Quantised updates: k-bit stochastic rounding (QSGD-style, Alistarh et al. 2017, "QSGD:
Communication-Efficient SGD via Gradient Quantization and Encoding", NeurIPS) and sign compression
(signSGD, Bernstein et al. 2018, ICML, with the ℓ1 scale of Karimireddy et al. 2019, "Error Feedback
Fixes SignSGD", ICML)."""

from __future__ import annotations

import torch

from .base import DEFENSES, Defense, Param, Tensors


def stochastic_round(t: torch.Tensor, bits: int, generator: torch.Generator) -> torch.Tensor:
    """``lo + s·⌊(t − lo)/s + u⌋``, u ~ U[0, 1), on the 2^bits levels spanning [min t, max t]:
    unbiased (E = t) and within one step s of t."""
    lo, hi = t.min(), t.max()
    if not hi > lo:  # a constant tensor is exactly representable
        return t.clone()
    levels = 2 ** bits - 1
    s = (hi - lo) / levels
    u = torch.rand(t.shape, generator=generator, dtype=t.dtype).to(t.device)
    q = torch.floor((t - lo) / s + u).clamp_(0, levels)  # clamp: float error at the top level
    return lo + q * s


@DEFENSES.register("quantize")
class Quantize(Defense):
    """Each tensor stochastically rounded to 2^bits levels over its own range."""

    name = "quantize"
    # Beyond 24 bits a float32 grid is finer than float32 itself: the defence would be the identity.
    params = {"bits": Param(int, low=1, low_open=False, high=24)}

    def apply(self, tensors: Tensors, generator: torch.Generator) -> Tensors:
        return [stochastic_round(t, self.values["bits"], generator) for t in tensors]


@DEFENSES.register("sign")
class Sign(Defense):
    """Each tensor replaced by ``sign(t) · ‖t‖₁ / n``: one bit per entry plus one scale per tensor, so
    the update keeps its magnitude (a FedAvg delta still reads as a step of the right size)."""

    name = "sign"
    params = {}

    def apply(self, tensors: Tensors, generator: torch.Generator) -> Tensors:
        return [torch.sign(t) * t.abs().mean() for t in tensors]
