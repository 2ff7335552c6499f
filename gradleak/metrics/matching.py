"""Permutation-agnostic scoring: pair reconstructions with originals by an optimal assignment.

A batch reconstruction comes back in arbitrary order, so a score matrix ``S[i, j]``
(reconstruction i vs original j) is reduced by ``max_π (1/B) Σ_i S[i, π(i)]``; this is the
seed's "SSIM_SMART". It is solved exactly by the Hungarian method (Kuhn 1955; scipy's
``linear_sum_assignment``); :func:`brute_force_assignment` is the reference for tests.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigError

BRUTE_FORCE_MAX_B = 8  # 8! = 40320 permutations; beyond that brute force is impractical


def _as_score_matrix(score: torch.Tensor | np.ndarray) -> np.ndarray:
    """Validate a square, non-empty, finite score matrix and return it as float64 numpy."""
    if isinstance(score, torch.Tensor):
        score = score.detach().cpu().double().numpy()
    matrix = np.asarray(score, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ConfigError(f"assignment: score must be a square B×B matrix, got shape {matrix.shape}")
    if matrix.shape[0] == 0:
        raise ConfigError("assignment: score matrix is empty")
    if not np.isfinite(matrix).all():
        raise ConfigError("assignment: score matrix holds NaN or inf")
    return matrix


def best_assignment(
    score: torch.Tensor | np.ndarray, maximize: bool = True
) -> tuple[np.ndarray, float]:
    """Optimal matching of a B×B score matrix by the Hungarian method.

    Returns ``(perm, mean_score)`` where ``perm[i]`` is the original matched to reconstruction i
    and ``mean_score = (1/B) Σ_i score[i, perm[i]]`` is the best (max or min) mean.
    """
    matrix = _as_score_matrix(score)
    rows, cols = linear_sum_assignment(matrix, maximize=maximize)
    perm = np.empty(matrix.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm, float(matrix[np.arange(len(perm)), perm].mean())


def brute_force_assignment(
    score: torch.Tensor | np.ndarray, maximize: bool = True
) -> tuple[np.ndarray, float]:
    """Same contract as :func:`best_assignment`, by trying all B! permutations (B <= 8).

    The reference implementation the Hungarian result is checked against; ties go to the
    lexicographically first permutation.
    """
    matrix = _as_score_matrix(score)
    b = matrix.shape[0]
    if b > BRUTE_FORCE_MAX_B:
        raise ConfigError(f"brute-force assignment: B = {b} is too large (max {BRUTE_FORCE_MAX_B})")
    perms = np.array(list(itertools.permutations(range(b))), dtype=np.int64)  # (B!, B)
    totals = matrix[np.arange(b), perms].sum(axis=1)
    best = int(np.argmax(totals) if maximize else np.argmin(totals))
    return perms[best], float(totals[best] / b)
