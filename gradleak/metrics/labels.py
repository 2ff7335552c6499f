"""Label-recovery accuracy: order-free (multiset) accuracy, its random baseline, and
per-instance accuracy after image matching."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from scipy.stats import binom

from ..errors import ConfigError

Labels = Union[torch.Tensor, np.ndarray, Sequence[int]]


def _as_labels(labels: Labels, name: str, num_classes: int | None = None) -> np.ndarray:
    """Validate a non-empty 1-D sequence of class indices (in [0, num_classes) when given)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ConfigError(f"{name}: labels must be a 1-D sequence, got shape {array.shape}")
    if array.size == 0:
        raise ConfigError(f"{name}: labels are empty")
    if array.dtype.kind not in "iub":
        is_float = array.dtype.kind == "f"
        if not (is_float and np.isfinite(array).all() and (array == np.round(array)).all()):
            raise ConfigError(f"{name}: labels must be integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 0:
        raise ConfigError(f"{name}: negative label {int(array.min())}")
    if num_classes is not None and array.max() >= num_classes:
        raise ConfigError(f"{name}: label {int(array.max())} out of range for {num_classes} classes")
    return array


def _check_num_classes(num_classes: int, name: str) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def label_counts(labels: Labels, num_classes: int) -> np.ndarray:
    """Count of each class, shape (num_classes,), int64."""
    num_classes = _check_num_classes(num_classes, "label_counts")
    return np.bincount(_as_labels(labels, "label_counts", num_classes), minlength=num_classes)


def label_accuracy(pred: Labels, true: Labels, num_classes: int | None = None) -> float:
    """Order-free label accuracy ``Σ_c min(k̂_c, k_c) / B``: the multiset overlap of predicted and
    true labels, the metric of analytic label recovery (e.g. Wainakh et al. 2022, LLG)."""
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes, "label_accuracy")
    pred_arr = _as_labels(pred, "label_accuracy (pred)", num_classes)
    true_arr = _as_labels(true, "label_accuracy (true)", num_classes)
    if len(pred_arr) != len(true_arr):
        raise ConfigError(
            f"label_accuracy: {len(pred_arr)} predicted labels for {len(true_arr)} true labels"
        )
    size = int(max(pred_arr.max(), true_arr.max())) + 1
    overlap = np.minimum(np.bincount(pred_arr, minlength=size), np.bincount(true_arr, minlength=size))
    return float(overlap.sum() / len(true_arr))


def random_baseline(true: Labels, num_classes: int) -> float:
    """Exact expected :func:`label_accuracy` of B independent uniformly random guesses.

    The guessed count of class c is Binomial(B, 1/C) (a marginal of the multinomial), so by
    linearity the expectation is ``Σ_c E[min(Bin(B, 1/C), k_c)] / B`` with
    ``E[min(X, k)] = Σ_{j=1..k} P(X >= j)``. Not 1/C for B > 1: with distinct true labels it is
    ``1 − (1 − 1/C)^B`` (0.1, 0.19, 0.3439 for B = 1, 2, 4 and C = 10).
    """
    num_classes = _check_num_classes(num_classes, "random_baseline")
    counts = label_counts(true, num_classes)
    batch = int(counts.sum())
    max_count = int(counts.max())
    # tail[j-1] = P(X >= j) for j = 1..max_count
    tail = binom.sf(np.arange(max_count), batch, 1.0 / num_classes)
    cumulative_tail = np.concatenate([[0.0], np.cumsum(tail)])  # cumulative_tail[k] = E[min(X, k)]
    return float(cumulative_tail[counts].sum() / batch)


def matched_label_accuracy(pred: Labels, true: Labels, perm: Labels) -> float:
    """Per-instance accuracy after image matching: the fraction of i with
    ``pred[i] == true[perm[i]]``, where ``perm[i]`` is the original matched to reconstruction i
    (from :func:`gradleak.metrics.matching.best_assignment`)."""
    pred_arr = _as_labels(pred, "matched_label_accuracy (pred)")
    true_arr = _as_labels(true, "matched_label_accuracy (true)")
    perm_arr = _as_labels(perm, "matched_label_accuracy (perm)")
    if not len(pred_arr) == len(true_arr) == len(perm_arr):
        raise ConfigError(
            f"matched_label_accuracy: lengths differ: {len(pred_arr)} predicted, "
            f"{len(true_arr)} true, {len(perm_arr)} in perm"
        )
    if not np.array_equal(np.sort(perm_arr), np.arange(len(perm_arr))):
        raise ConfigError(f"matched_label_accuracy: perm is not a permutation of 0..{len(perm_arr) - 1}")
    return float((pred_arr == true_arr[perm_arr]).mean())
