"""Instance-wise factorisation of the last layer's gradient for small batches, after the
instance-wise view of iLRG (Ma et al. 2023, "Instance-wise Batch Label Restoration via Gradients in
Federated Learning", ICLR).

For ``2 ≤ B ≤ (C − 1) / 2`` a one-step gradient ``B ∇W = (P − Y)ᵀ H`` has rank B and is
over-determined given the labels, so fitting it sample by sample tells a right label multiset from
a wrong one. ``ilrg-dummy`` (:mod:`~gradleak.attacks.labels.ilrg_dummy`) uses this to check its
decoded counts and their nearest one-sample moves (:func:`factorised_counts`); where no candidate
fits exactly (very confident samples, FedAvg, noise) its counts stand. Measurements:
docs/labels.md.
"""

from __future__ import annotations

from typing import Optional

import torch

from .base import LastLayer, labels_from_counts

# Accepted only when it fits this well (scale-free squared residual). Exact fits land near 1e-12
# from float32 gradients; the nearest wrong multisets stayed above 1e-5.
_FACTOR_TOLERANCE = 1e-8
_FACTOR_RESTARTS = 3
_FACTOR_NEIGHBOURS = 8  # other count vectors tried (one sample moved), most plausible first
_FACTOR_MIN_CONDITION = 1e-5  # smallest / largest singular value of ∇W the fit can use
# One step's gradient from B samples has rank B: the (B+1)-th singular value is float32 noise
# (~1e-8 of the largest on LeNet, ConvNet, ResNet-18), while two or more local steps (FedAvg) or DP
# noise raise it above 5e-5. Above this ratio no exact fit exists and none is tried.
_FACTOR_MAX_RANK_EXCESS = 1e-6

RowSpace = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ∇W's top-B U (C, B), S (B,), Vᵀ (B, D)


def one_sample_moves(counts: torch.Tensor, real: torch.Tensor, lower: torch.Tensor) -> list[torch.Tensor]:
    """Count vectors one sample away from ``counts`` (no class below ``lower``), closest to the
    real-valued solution ``real`` first: the candidates both decoding and factorisation try."""
    moves = []
    for source in range(len(counts)):
        if counts[source] - 1 < lower[source]:
            continue
        for target in range(len(counts)):
            if target == source:
                continue
            moved = counts.clone()
            moved[source] -= 1
            moved[target] += 1
            moves.append((float((moved.double() - real).pow(2).sum()), moved))
    return [moved for _, moved in sorted(moves, key=lambda pair: pair[0])]


def factorisable(batch_size: int, num_classes: int, feature_dim: int) -> bool:
    """Whether the instance-wise fit is over-determined enough to tell multisets apart:
    ``(C − 1) B`` equations against ``B²`` unknowns, with a margin of two."""
    return 2 <= batch_size <= min((num_classes - 1) // 2, feature_dim)


def row_space(layer: LastLayer, batch_size: int) -> Optional[RowSpace]:
    """``∇W``'s top-``batch_size`` singular triplets, or None when no exact instance-wise fit can
    exist (rank above B: a FedAvg delta, added noise) or be found (the B-th singular value too small:
    a sample fit with near certainty leaves too little of its gradient)."""
    u, s, vh = torch.linalg.svd(layer.grad_weight, full_matrices=False)
    # with exactly B features ∇W has only B singular values, and rank above B is impossible
    if len(s) > batch_size and float(s[batch_size]) > _FACTOR_MAX_RANK_EXCESS * float(s[0]):
        return None
    if float(s[batch_size - 1]) <= _FACTOR_MIN_CONDITION * float(s[0]):
        return None
    return u[:, :batch_size], s[:batch_size], vh[:batch_size]


def fit_instances(layer: LastLayer, factors: RowSpace, labels: torch.Tensor, features: torch.Tensor, generator: torch.Generator) -> float:
    """How well one sample per entry of ``labels`` explains ``∇W`` and ``∇b`` exactly.

    For B below the number of classes ``B ∇W = (P − Y)ᵀ H`` has rank B and the features lie in its
    row space: ``H = A V`` with ``V`` its top-B right singular vectors (``factors``, from
    :func:`row_space`). Given the labels ``Y``, fit the B × B coordinates ``A``
    (``P = softmax(A V Wᵀ + b)``) to ``(P − Y)ᵀ A = B U S`` and ``(P − Y)ᵀ 1 = B ∇b`` by L-BFGS,
    starting from dummy features projected into the row space. Returns the smallest squared residual
    over the restarts, each column scaled by its singular value; near 0 only when the multiset is
    right (the system is over-determined for ``B ≤ (C − 1) / 2``). The instance-wise step of Ma et
    al. (ICLR 2023), solved by fitting.
    """
    batch_size = int(labels.numel())
    weight, bias = layer.weight, layer.bias
    u, s, vh = factors
    to_logits = vh @ weight.T  # (B, C)
    target = batch_size * u * s[None, :]  # (C, B)
    onehot = torch.nn.functional.one_hot(labels, weight.shape[0]).to(weight.dtype)
    best = float("inf")
    for _ in range(_FACTOR_RESTARTS):
        start = features[torch.randint(len(features), (batch_size,), generator=generator)] @ vh.T
        coords = start.contiguous().requires_grad_(True)
        optimiser = torch.optim.LBFGS([coords], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-14, tolerance_change=1e-16)

        def residual() -> torch.Tensor:
            signal = torch.softmax(coords @ to_logits + bias, dim=1) - onehot  # rows: p_n − y_n
            fit = ((signal.T @ coords - target) / s[None, :]).pow(2).sum()
            return fit + (signal.sum(dim=0) - batch_size * layer.grad_bias).pow(2).sum()

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            value = residual()
            value.backward()
            return value

        with torch.enable_grad():  # callers may hold no_grad
            optimiser.step(closure)
        with torch.no_grad():
            value = float(residual())
        if value == value:  # NaN when a restart diverged
            best = min(best, value)
        if best < _FACTOR_TOLERANCE:
            break
    return best


def factorised_counts(layer: LastLayer, counts: torch.Tensor, real: torch.Tensor, lower: torch.Tensor, features: torch.Tensor) -> Optional[torch.Tensor]:
    """The first of ``counts`` and its nearest one-sample moves whose labels fit the gradient exactly
    (:func:`fit_instances`), or None when none does, B is too large or :func:`row_space` rules a
    fit out."""
    batch_size = int(counts.sum())
    if layer.bias is None or not factorisable(batch_size, *layer.weight.shape):
        return None
    factors = row_space(layer, batch_size)
    if factors is None:
        return None
    generator = torch.Generator().manual_seed(0)
    for candidate in [counts] + one_sample_moves(counts, real, lower)[:_FACTOR_NEIGHBOURS]:
        labels = labels_from_counts(candidate)
        if fit_instances(layer, factors, labels, features, generator) < _FACTOR_TOLERANCE:
            return candidate
    return None
