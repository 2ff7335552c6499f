"""Combine image labels with gradient label counts: the count-constrained assignment.

Gradient label recovery (e.g. iLRG, Ma et al. 2023) says how many samples of each class are in
the batch, but not which reconstruction is which; a labeller says how likely each
reconstruction is of each class. The best labelling consistent with both maximises

    Σ_i log p(y_i | x̂_i)   subject to   |{i : y_i = c}| = k_c  for every class c,

an assignment problem once class c is expanded into k_c identical slots (N slots in all),
solved exactly by the Hungarian method (scipy ``linear_sum_assignment``).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..errors import ConfigError

# linear_sum_assignment rejects infinite costs; a large finite stand-in for log 0 keeps
# impossible pairs last without making the problem infeasible.
_LOG_ZERO = -1e9


def _check(
    log_probs: Tensor | np.ndarray, counts: Sequence[int] | Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    lp = log_probs.detach().cpu().double().numpy() if isinstance(log_probs, Tensor) else np.asarray(log_probs, float)
    if lp.ndim != 2 or lp.shape[0] == 0:
        raise ConfigError(f"log-probabilities must be a non-empty (N, C) table; got shape {lp.shape}")
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ConfigError("log-probabilities hold NaN or +inf")
    k = counts.detach().cpu().numpy() if isinstance(counts, Tensor) else np.asarray(counts)
    if k.shape != (lp.shape[1],):
        raise ConfigError(f"counts must have one entry per class ({lp.shape[1]}); got shape {k.shape}")
    if not np.all(k == np.round(k)) or (k < 0).any():
        raise ConfigError(f"counts must be non-negative integers; got {k.tolist()}")
    k = k.astype(np.int64)
    if k.sum() != lp.shape[0]:
        raise ConfigError(f"counts sum to {int(k.sum())} but there are {lp.shape[0]} reconstructions")
    return np.maximum(lp, _LOG_ZERO), k


def constrained_assignment(log_probs: Tensor | np.ndarray, counts: Sequence[int] | Tensor | np.ndarray) -> list[int]:
    """Class of each of N reconstructions maximising Σ log p, with exactly ``counts[c]`` of class c."""
    lp, k = _check(log_probs, counts)
    slot_class = np.repeat(np.arange(len(k)), k)  # column j of the N×N problem is a slot of class slot_class[j]
    rows, cols = linear_sum_assignment(lp[:, slot_class], maximize=True)
    labels = np.empty(lp.shape[0], dtype=np.int64)
    labels[rows] = slot_class[cols]
    return labels.tolist()


def brute_force_constrained_assignment(
    log_probs: Tensor | np.ndarray, counts: Sequence[int] | Tensor | np.ndarray
) -> tuple[list[int], float]:
    """Reference for tests: try every distinct labelling with the given counts (N ≤ 8)."""
    lp, k = _check(log_probs, counts)
    if lp.shape[0] > 8:
        raise ConfigError("brute-force assignment is limited to N ≤ 8")
    slots = np.repeat(np.arange(len(k)), k)
    best, best_score = None, -np.inf
    for perm in set(itertools.permutations(slots.tolist())):
        score = lp[np.arange(len(perm)), list(perm)].sum()
        if score > best_score:
            best, best_score = list(perm), score
    return best, float(best_score)


def assignment_log_prob(log_probs: Tensor | np.ndarray, labels: Sequence[int]) -> float:
    """Σ_i log_probs[i, labels[i]] — the objective, for comparing labellings."""
    lp = log_probs.detach().cpu().double().numpy() if isinstance(log_probs, Tensor) else np.asarray(log_probs, float)
    return float(lp[np.arange(len(labels)), np.asarray(labels)].sum())

