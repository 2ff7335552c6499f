"""``ilrg-dummy``: iLRG (Ma et al. 2023, "Instance-wise Batch Label Restoration via Gradients in
Federated Learning", ICLR) with the batch's mean predictions estimated from dummy inputs.

It keeps iLRG's count system (:func:`~gradleak.attacks.labels.ilrg.solve_counts_bounded`) and
replaces the paper's class embeddings, which fail when an untrained model favours a few classes, by
an estimate in logit space (C×C algebra):

- with ``g = B ∇b`` and ``G_c = B W ∇W_cᵀ = Σ_n (p_nc − y_nc) W h_n`` (both exact), class c's mean
  logit is ``u_c = ẑ − (G_c − R_c − g_c ẑ) / k_c + b``: the batch's pull ``Σ_n p_nc W h_n`` is
  ``P_c ẑ`` (ẑ = batch-mean ``W h``) plus ``R_c``, the covariance of predictions with the logit
  deviations they come from;
- ẑ is not identifiable from the last layer to first order, so it is a precision-weighted blend of
  two priors: the regression of ``G_c − R_c`` on ``g_c`` across classes (class means near the batch
  mean; precise when some ``|g_c|`` is large) and the mean logit of dummy inputs sent through θ;
- ``p̄_c = mean_d softmax(u_c + ζ_d)`` and ``R_c`` use ``ζ_d``, the logit deviations of dummy inputs
  (:func:`~gradleak.attacks.labels.base.dummy_images`), for the within-class spread of predictions
  (the mean of softmax is not the softmax of the mean), shrunk by the spread the class means
  already account for (:func:`within_class_spread`);
- start from the dummies' own estimate ``k = B · mean_d softmax(z_d) − g`` (iLRG's counts can be
  wild when ∇b ≈ 0, e.g. after several FedAvg steps) and iterate with the counts of the system,
  solved with bounds ``⌈−B ∇b_c⌉ ≤ k_c ≤ B``, until they settle (:func:`_refine`). The lower bounds
  are exact since probabilities are positive, and fix every count when they sum to B, as at B = 1
  unless the sample is already fit;
- turn the real-valued counts into integers by their error covariance rather than class by class
  (:func:`count_covariance`, :func:`decode_counts`): ẑ's error moves the counts of the classes the
  model favours together, so the integer vector nearest in Mahalanobis distance beats rounding;
- for ``2 ≤ B ≤ (C − 1) / 2`` and a one-step gradient, check the decoded counts and their nearest
  one-sample moves by the paper's instance-wise view
  (:func:`~gradleak.attacks.labels.factorise.factorised_counts`).

Given auxiliary public images, those replace the dummy inputs. Measurements: docs/labels.md.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch

from ...threat import Observation
from .base import (
    LABEL_STRATEGIES,
    AuxData,
    LabelEstimate,
    LastLayer,
    present_at_least,
    read_last_layer,
    round_counts,
    sample_features,
)
from .factorise import factorised_counts, one_sample_moves
from .ilrg import require_bias, solve_counts_bounded

_MIN_WITHIN_SCALE = 0.8  # within_class_spread never shrinks the inputs' spread below this scale
_COUNT_FLOOR = 0.05  # counts below this are treated as this when dividing by k_c
_MAX_ITERATIONS = 50
# Decoding (count_covariance): the most principal axes of ẑ's uncertainty used, and a floor on the
# standard deviation of every count's error (a class no error source reaches keeps a finite precision).
_COVARIANCE_AXES = 16
_COUNT_NOISE_FLOOR = 0.01


def within_class_spread(spread: torch.Tensor, class_means: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Shrink the inputs' logit deviations to the within-class spread.

    The inputs' spread is the batch's total spread (within + between classes), but each class's
    predictions vary only by the within-class part around its own mean ``u_c``. Too wide a spread
    flattens the mean softmax of the dominant classes and biases their counts. Scaled by
    ``α = √(1 − between / total)``, with ``between`` the count-weighted variance of the ``u_c``;
    both measured on softmax-invariant (row-centred) logits.

    ``α`` is kept at least :data:`_MIN_WITHIN_SCALE`: ``between`` comes from estimated class means
    and carries their noise, and the inputs' total spread can fall short of the images', which
    without the floor can collapse ``α`` far below the images' true within-class scale.
    """
    weights = counts.clamp(min=0)
    if float(weights.sum()) <= 0:
        return spread
    weights = weights / weights.sum()
    means = class_means - class_means.mean(dim=1, keepdim=True)
    centred = means - (weights[:, None] * means).sum(dim=0)
    between = float((weights * centred.pow(2).sum(dim=1)).sum())
    total = float((spread - spread.mean(dim=1, keepdim=True)).pow(2).sum(dim=1).mean())
    if total <= 0:
        return spread
    return spread * max(_MIN_WITHIN_SCALE**2, 1.0 - between / total) ** 0.5


def _class_probs(class_means: torch.Tensor, spread: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """``softmax(u_j + ζ_d)`` for every class j and deviation d, as ``(classes, probs)`` with probs of
    shape ``(j, N, C)``. Classes are taken in chunks so that memory stays O(chunk · N · C) for many
    classes."""
    num_classes, num_inputs = class_means.shape[0], spread.shape[0]
    chunk = max(1, 2**22 // (num_inputs * num_classes))
    for start in range(0, num_classes, chunk):
        classes = slice(start, start + chunk)
        yield classes, torch.softmax(class_means[classes, None, :] + spread[None, :, :], dim=2)


def _spread_moments(class_means: torch.Tensor, spread: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``p̄_j = mean_d softmax(u_j + ζ_d)`` and ``R_c = Σ_j k_j mean_d softmax(u_j + ζ_d)_c ζ_d``.

    ``R`` is how predictions correlate with the deviations they come from.
    """
    num_classes, num_dummies = class_means.shape[0], spread.shape[0]
    mean_probs = torch.empty_like(class_means)
    weighted = torch.zeros(num_dummies, num_classes, dtype=class_means.dtype)  # Σ_j k_j p(u_j + ζ_d)
    for classes, probs in _class_probs(class_means, spread):
        mean_probs[classes] = probs.mean(dim=1)
        weighted += torch.einsum("j,jdc->dc", counts[classes], probs)
    return mean_probs, weighted.T @ spread / num_dummies


class FixedPoint(NamedTuple):
    """``ilrg-dummy``'s estimate: real-valued counts and the pieces of the model they came from."""

    counts: torch.Tensor  # (C,) real-valued
    batch_mean: torch.Tensor  # (C,) ẑ, the batch-mean logit without the bias
    class_means: torch.Tensor  # (C, C) row c: u_c, class c's mean logit
    spread: torch.Tensor  # (N, C) within-class logit deviations, as shrunk by within_class_spread


def _refine(layer: LastLayer, batch_size: int, dummy_features: torch.Tensor, fixed_batch_mean: Optional[torch.Tensor] = None,
            start: Optional[torch.Tensor] = None) -> FixedPoint:
    """``ilrg-dummy``'s fixed point: real-valued counts, the batch-mean logit ẑ and the class means
    and spread they used.

    ``fixed_batch_mean`` holds ẑ there instead of estimating it; ``start`` replaces the dummies'
    counts as the first iterate."""
    weight, bias, grad_bias = layer.weight, layer.bias, layer.grad_bias
    g = batch_size * grad_bias  # Σ_n p_nc − k_c, exact
    pulls = batch_size * layer.grad_weight @ weight.T  # row c: Σ_n (p_nc − y_nc) W h_n, exact
    dummy_logits = dummy_features @ weight.T
    dummy_mean = dummy_logits.mean(dim=0)
    spread = dummy_logits - dummy_mean  # (N, C): within-batch logit deviations
    lower = present_at_least(grad_bias, batch_size).to(grad_bias.dtype)
    if start is None:
        # the dummies' summed probabilities (k = P − g): iLRG's own start can be wild when ∇b ≈ 0
        start = batch_size * torch.softmax(dummy_logits + bias, dim=1).mean(dim=0) - g
    counts = start.clamp(min=0).maximum(lower).clamp(max=float(batch_size))
    covariance_pull = torch.zeros_like(pulls)
    batch_mean = dummy_mean if fixed_batch_mean is None else fixed_batch_mean
    for _ in range(_MAX_ITERATIONS):
        floored = counts.clamp(min=_COUNT_FLOOR)
        mean_pulls = pulls - covariance_pull  # ≈ P_c ẑ − k_c (u_c − b)
        precision = float((g**2 / floored).sum())
        if fixed_batch_mean is None and precision > 0:
            regression = ((g / floored)[:, None] * mean_pulls).sum(dim=0) / precision
            blend = precision / (precision + batch_size)
            batch_mean = blend * regression + (1 - blend) * dummy_mean
        class_means = batch_mean[None, :] - (mean_pulls - g[:, None] * batch_mean[None, :]) / floored[:, None] + bias
        within = within_class_spread(spread, class_means, counts)
        mean_probs, covariance_pull = _spread_moments(class_means, within, counts)
        updated = solve_counts_bounded(mean_probs, grad_bias, batch_size, lower)
        converged = torch.allclose(updated, counts, atol=1e-6)
        counts = updated
        if converged:
            break
    return FixedPoint(counts, batch_mean, class_means, within)


def sampling_covariance(class_means: torch.Tensor, spread: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Covariance of the batch's summed probabilities ``Σ_n p_n`` given the class means: each of class
    j's ``k_j`` samples predicts ``softmax(u_j + ζ)`` with its own deviation ζ, so
    ``Σ_j k_j Cov_ζ(softmax(u_j + ζ))`` over the inputs' deviations ``spread``.

    The estimate uses their mean; a batch draws only a few deviations per class. The term is large
    where the model's predictions swing between a few classes from image to image; where it
    dominates, the decoding stays close to rounding.
    """
    num_classes, num_inputs = class_means.shape[0], spread.shape[0]
    covariance = torch.zeros(num_classes, num_classes, dtype=class_means.dtype)
    for classes, probs in _class_probs(class_means, spread):
        centred = probs - probs.mean(dim=1, keepdim=True)
        weights = counts[classes].clamp(min=0) / max(num_inputs - 1, 1)
        weighted = (centred * weights[:, None, None]).reshape(-1, num_classes)
        covariance += weighted.T @ centred.reshape(-1, num_classes)
    return covariance


def count_covariance(layer: LastLayer, batch_size: int, dummy_features: torch.Tensor, estimate: FixedPoint) -> torch.Tensor:
    """Covariance of the real-valued counts' error: what ẑ's uncertainty induces, plus the batch's
    own sampling of predictions (:func:`sampling_covariance`), plus :data:`_COUNT_NOISE_FLOOR`² on
    the diagonal.

    ẑ (the batch-mean logit) is the estimate the last layer cannot pin down; take it off by about a
    batch mean's sampling error, ``Σ_ẑ = Cov(dummy logits) / B``. Its effect on the counts is
    strongly correlated across classes (a shift that raises one dominant class's count lowers
    another's). Sigma points: re-solve the fixed point with ẑ moved one standard deviation either
    way along ``Σ_ẑ``'s principal axes (at most :data:`_COVARIANCE_AXES`) and average the outer
    products of the count changes. Unlike a derivative this sees that a count held at its lower
    bound moves one way only. The counts are ``Σ_n p_n − B ∇b``, so the error of the summed
    probabilities adds to theirs as it is.
    """
    real, batch_mean = estimate.counts, estimate.batch_mean
    logits = dummy_features @ layer.weight.T
    variances, axes = torch.linalg.eigh(torch.cov(logits.T) / batch_size)
    keep = torch.argsort(variances, descending=True)[:_COVARIANCE_AXES]
    at_mean = _refine(layer, batch_size, dummy_features, fixed_batch_mean=batch_mean, start=real).counts
    covariance = sampling_covariance(estimate.class_means, estimate.spread, real)
    covariance += _COUNT_NOISE_FLOOR**2 * torch.eye(len(real), dtype=real.dtype)
    for i in keep.tolist():
        step = float(variances[i].clamp(min=0)) ** 0.5 * axes[:, i]
        for sign in (1.0, -1.0):
            moved = _refine(layer, batch_size, dummy_features, fixed_batch_mean=batch_mean + sign * step, start=at_mean).counts
            change = moved - at_mean
            covariance += 0.5 * torch.outer(change, change)
    return covariance


def decode_counts(real: torch.Tensor, covariance: torch.Tensor, batch_size: int, lower: torch.Tensor) -> torch.Tensor:
    """The integer counts most probable under ``real``'s error covariance: from the rounding, move
    one sample at a time while the Mahalanobis distance ``(k − real)ᵀ Σ⁻¹ (k − real)`` drops.

    Rounding each class on its own treats the errors as independent; the ẑ-induced errors are
    strongly correlated (see :func:`count_covariance`)."""
    precision = torch.linalg.pinv(covariance, hermitian=True)

    def distances(candidates: torch.Tensor) -> torch.Tensor:  # (M, C) count vectors → (M,)
        gaps = candidates.to(real.dtype) - real
        return ((gaps @ precision) * gaps).sum(dim=1)

    counts = round_counts(real, batch_size, lower=lower)
    best = float(distances(counts[None])[0])
    for _ in range(batch_size * len(real)):  # each accepted move lowers the distance: this bound is never reached
        moves = one_sample_moves(counts, real, lower)
        if not moves:
            break
        scores = distances(torch.stack(moves))
        i = int(scores.argmin())  # ties: the first, i.e. the move closest to the real counts
        if float(scores[i]) >= best - 1e-12:
            break
        counts, best = moves[i], float(scores[i])
    return counts


@LABEL_STRATEGIES.register("ilrg-dummy")
def ilrg_dummy(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """iLRG with class means and prediction spread corrected using dummy inputs (needs a bias).

    Given auxiliary public images, those replace the dummy inputs.
    """
    batch_size = obs.require_batch_size()
    layer = read_last_layer(obs)
    require_bias(layer, "ilrg-dummy")
    lower = present_at_least(layer.grad_bias, batch_size)
    if int(lower.sum()) == batch_size:  # the exact bounds fix every count (at B = 1 unless p_y ≈ 1)
        return LabelEstimate(counts=lower, scores=lower.float(), method="ilrg-dummy")
    if batch_size == 1 and int((layer.grad_bias <= 0).sum()) == 1:
        # A saturated model (p_y = 1 in float32) leaves ∇b_y = 0 with every other class > 0: the one
        # non-positive entry is the label, as in iDLG (Zhao et al. 2020).
        counts = (layer.grad_bias <= 0).long().cpu()
        return LabelEstimate(counts=counts, scores=counts.float(), method="ilrg-dummy")
    sample = sample_features(obs, batch_size, aux)
    estimate = _refine(layer, batch_size, sample.features)
    real = estimate.counts
    covariance = count_covariance(layer, batch_size, sample.features, estimate)
    counts = decode_counts(real, covariance, batch_size, lower)
    factorised = factorised_counts(layer, counts, real, lower, sample.features)
    return LabelEstimate(counts=counts if factorised is None else factorised, scores=real.float(), method="ilrg-dummy")
