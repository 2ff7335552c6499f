"""iLRG: batch label counts from the last layer's gradient (Ma et al. 2023, "Instance-wise Batch
Label Restoration via Gradients in Federated Learning", ICLR; docs/ALGORITHMS.md, "Label recovery
from gradients").

Both iLRG strategies rest on the exact bias identity ``B ∇b_i = Σ_n p_ni − k_i``: the counts follow
once the batch's summed probabilities ``Σ_n p_ni`` are estimated. This module holds the count
system they share (:func:`solve_counts`, :func:`solve_counts_bounded`) and the paper's ``ilrg``:

1. class embeddings ``ē_c = ∇W_c / ∇b_c``;
2. ``p̄_c = softmax(W ē_c + b)``, the mean prediction on the samples of class c;
3. solve ``Σ_j k_j = B`` and ``Σ_j k_j p̄_j[i] − k_i = B ∇b_i`` (i = 1..C) by least squares;
4. clip negatives, round, fix the sum to B (largest remainder).

All classes enter the system, as in the authors' code; ``|∇b_c|`` is kept away from 0. Step 1
reads ``∇W_c ∝ Σ_n (p_nc − y_nc) h_n`` as the mean feature of class c, which holds when
``Σ_n p_nc ≪ k_c`` (near-uniform predictions over many classes, the paper's setting). An untrained
model that favours a few of 10 classes (DLG's LeNet, ConvNet) breaks it: the favoured classes'
``∇b_c`` is near 0 or positive and their embeddings are wrong.
:mod:`~gradleak.attacks.labels.ilrg_dummy` estimates ``p̄`` without them. Measurements:
docs/labels.md.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...errors import ConfigError
from ...threat import Observation
from .base import LABEL_STRATEGIES, AuxData, LabelEstimate, LastLayer, read_last_layer, round_counts

_TINY = 1e-12  # relative floor on |∇b_c| so that ē_c stays finite


def _safe_grad_bias(grad_bias: torch.Tensor) -> torch.Tensor:
    floor = _TINY * float(grad_bias.abs().max().clamp(min=1e-300))
    return torch.where(grad_bias >= 0, grad_bias.clamp(min=floor), grad_bias.clamp(max=-floor))


def _count_system(mean_probs: torch.Tensor, grad_bias: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    num_classes = mean_probs.shape[0]
    system = torch.cat([torch.ones(1, num_classes, dtype=mean_probs.dtype), mean_probs.T - torch.eye(num_classes, dtype=mean_probs.dtype)])
    target = torch.cat([torch.full((1,), float(batch_size), dtype=mean_probs.dtype), batch_size * grad_bias])
    return system, target


def solve_counts(mean_probs: torch.Tensor, grad_bias: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Least-squares counts from ``Σ_j k_j = B`` and ``Σ_j k_j p̄_j[i] − k_i = B ∇b_i`` (rows of
    ``mean_probs`` are ``p̄_j``), as in the paper (pseudo-inverse, unbounded)."""
    system, target = _count_system(mean_probs, grad_bias, batch_size)
    return torch.linalg.lstsq(system, target[:, None], driver="gelsd").solution[:, 0]


def solve_counts_bounded(mean_probs: torch.Tensor, grad_bias: torch.Tensor, batch_size: int, lower: torch.Tensor) -> torch.Tensor:
    """The same system solved with ``lower ≤ k ≤ B`` (bounded least squares): near-collinear
    columns can no longer send the solution to ±∞."""
    from scipy.optimize import lsq_linear

    system, target = _count_system(mean_probs, grad_bias, batch_size)
    # float64 and a lower bound clamped into [0, B): in float32, B + 1e-9 == B, and a noisy update
    # can push the lower bound to B or past it, which lsq_linear refuses.
    lower64 = torch.nan_to_num(lower.double(), nan=0.0).clamp(0.0, float(batch_size) - 1e-6)
    upper = torch.full_like(lower64, float(batch_size))
    result = lsq_linear(system.double().numpy(), target.double().numpy(), bounds=(lower64.numpy(), upper.numpy()), method="bvls")
    return torch.from_numpy(result.x).to(mean_probs.dtype)


def ilrg_real_counts(layer: LastLayer, batch_size: int) -> torch.Tensor:
    """Real-valued per-class counts of the paper's iLRG (steps 1–3)."""
    embeddings = layer.grad_weight / _safe_grad_bias(layer.grad_bias)[:, None]  # (C, D)
    mean_probs = torch.softmax(embeddings @ layer.weight.T + layer.bias, dim=1)  # row j: p̄_j
    return solve_counts(mean_probs, layer.grad_bias, batch_size)


def require_bias(layer: LastLayer, method: str) -> None:
    """Refuse a bias-free last layer: the iLRG count system is built on ``∇b``."""
    if layer.bias is None or layer.grad_bias is None:
        raise ConfigError(f"{method} needs a bias in the last linear layer; use llg, geng or idlg for bias-free models")


@LABEL_STRATEGIES.register("ilrg")
def ilrg(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """Counts from the linear system built on recovered class embeddings (needs a bias)."""
    batch_size = obs.require_batch_size()
    layer = read_last_layer(obs)
    require_bias(layer, "ilrg")
    real = ilrg_real_counts(layer, batch_size)
    return LabelEstimate(counts=round_counts(real, batch_size), scores=real.float(), method="ilrg")
