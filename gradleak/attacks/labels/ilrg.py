"""iLRG (Ma et al., "Instance-wise Batch Label Restoration via Gradients in Federated Learning",
ICLR 2023) and a refinement of it, ``ilrg-dummy``.

Both rest on the exact bias identity ``B ∇b_i = Σ_n p_ni − k_i``: the counts follow once the
batch's summed probabilities ``Σ_n p_ni`` are estimated.

``ilrg`` (the paper, ALGORITHMS.md):

1. class embeddings ``ē_c = ∇W_c / ∇b_c``;
2. ``p̄_c = softmax(W ē_c + b)``, the mean prediction on the samples of class c;
3. solve ``Σ_j k_j = B`` and ``Σ_j k_j p̄_j[i] − k_i = B ∇b_i`` (i = 1..C) by least squares;
4. clip negatives, round, fix the sum to B (largest remainder).

All classes enter the system, as in the authors' code; ``|∇b_c|`` is kept away from 0. Step 1
reads ``∇W_c ∝ Σ_n (p_nc − y_nc) h_n`` as the mean feature of class c, which holds when
``Σ_n p_nc ≪ k_c`` (near-uniform predictions over many classes, the paper's setting). With 10
classes and an untrained model that favours a few classes (DLG's LeNet, ConvNet) the favoured
classes' ``∇b_c`` is near 0 or positive and their embeddings are wrong; accuracy drops to
0.79–0.93 at B = 128 on CIFAR-10 (benchmarks/label_recovery.py).

``ilrg-dummy`` keeps steps 3–4 and estimates ``p̄_c`` better, in logit space (C×C algebra):

- with ``g = B ∇b`` and ``G_c = B W ∇W_cᵀ = Σ_n (p_nc − y_nc) W h_n`` (both exact), class c's mean
  logit is ``u_c = ẑ − (G_c − R_c − g_c ẑ) / k_c + b``: the batch's pull ``Σ_n p_nc W h_n`` is
  ``P_c ẑ`` (ẑ = batch-mean ``W h``) plus ``R_c``, the covariance of predictions with the logit
  deviations they come from;
- ẑ is not identifiable from the last layer to first order, so it is a precision-weighted blend of
  two priors: the regression of ``G_c − R_c`` on ``g_c`` across classes (class means near the batch
  mean; precise when some ``|g_c|`` is large) and the mean logit of dummy inputs sent through θ;
- ``p̄_c = mean_d softmax(u_c + ζ_d)`` and ``R_c`` use ``ζ_d``, the logit deviations of dummy
  inputs (:func:`~gradleak.attacks.labels.base.dummy_images`), for the within-class spread of
  predictions (the mean of softmax is not the softmax of the mean), shrunk by the spread the
  class means ``u_c`` already account for (:func:`within_class_spread`);
- start from the dummies' own estimate ``k = B · mean_d softmax(z_d) − g`` (iLRG's counts can be
  wild when ∇b ≈ 0, e.g. after several FedAvg steps) and iterate with the counts from step 3
  (solved with bounds ``⌈−B ∇b_c⌉ ≤ k_c ≤ B``; the lower
  bounds are exact since probabilities are positive, and fix every count when they sum to B, as
  at B = 1 unless the sample is already fit) until they settle;
- turn the real-valued counts into integers by their error covariance rather than class by class
  (:func:`count_covariance`, :func:`decode_counts`): ẑ's error moves the counts of the classes the
  model favours together, so the integer vector nearest in Mahalanobis distance beats rounding.
  The batch's own draw of predictions adds an error of its own (:func:`sampling_covariance`); where
  it dominates, as on LeNet, the decoding stays close to rounding;
- for ``2 ≤ B ≤ (C − 1) / 2`` (B ≤ 4 on 10 classes) and a one-step gradient (``∇W`` of rank B), try
  the paper's instance-wise view: factorise ``B ∇W = (P − Y)ᵀ H`` sample by sample
  (:func:`fit_instances`) for the decoded counts and their nearest one-sample moves, and keep the
  first multiset that fits exactly. The system is over-determined there, so an exact fit names the
  labels; when none fits (very confident samples, FedAvg, noise) the decoded counts stand.
  Untrained LeNet, 200 batches over seeds 0–4, B = 2 / 3 / 4: 0.995 / 0.993 / 0.995 without it,
  1.000 / 1.000 / 0.999 with it, for 0.39 s more per batch (0.012 s → 0.40 s).

Untrained, CIFAR-10 test images, 40 batches per size (``gradleak labels --trials 40``; measured
before the instance-wise step, which changes B ≤ 4 only), mean accuracy at B = 1 / 4 / 8 / 16 / 32 /
64 / 128: ResNet-18 1.000 throughout; ConvNet-64 1.000 up to B = 16, then 0.996 / 0.991 / 0.989;
LeNet (DLG's init) 1.000 / 0.994 / 0.988 / 0.988 / 0.986 / 0.9898 / 0.990 (standard errors 0.006 at
B = 4 down to 0.001 at 128). That is one initialisation (seed 0), and for LeNet the most favourable
of five. Over seeds 0–4 (``--inits 5 --trials 200``) LeNet gives 1.000 / 0.989 / 0.978 / 0.978 /
0.975 / 0.975 / 0.975, and seed 2 alone 0.955 at B = 32; over seeds 0–2 (``--inits 3 --trials 15``)
ResNet-18 stays at 1.000 up to B = 64 (0.997 at 128) and ConvNet-64 gives 1.000 up to B = 16, then
0.998 / 0.988 / 0.982.

Those numbers predate the floor on the within-class scale (:func:`within_class_spread`). Same
batches without and with it (``--inits 5 --trials 100 --batch-sizes 4 8 16 32 64 128``), LeNet
at B = 8 … 128: 0.981 / 0.978 / 0.975 / 0.976 / 0.974 → 0.986 / 0.980 / 0.979 / 0.980 / 0.979. Of
the 76 batches that change (65 better), 55 are seed 2's (B = 32: 0.959 → 0.975; B = 128: 0.956 →
0.980); B = 4 0.998 → 0.995 (one batch). ConvNet-64 (B = 64 and 128, 30 batches over seeds 0–2)
and ResNet-18 (B = 64 and 128, 24 batches) keep every batch's accuracy, though the floor acts in
about a quarter of their iterations; trained LeNet (``--trained-steps 500``, B = 8 / 16) gains
0.972 → 0.981 and 0.898 → 0.917.

Decoding by the error covariance instead of rounding, same batches, rounding → decoding with a
fixed 0.1 for the errors other than ẑ's → decoding with the sampling covariance (current):
ConvNet-64 at B = 64 (``--trials 21 --inits 3``) 0.9896 → 0.9940 → 0.9948 (8 batches better than
rounding, 1 worse); ResNet-18 (``--trials 12 --inits 3``) 1.000 throughout at B = 64 and 0.9993 →
1.000 → 1.000 at B = 128; untrained LeNet (``--inits 5 --trials 100``) at B = 8 / 16 / 32 / 64 / 128
0.986 / 0.980 / 0.979 / 0.980 / 0.979 → 0.985 / 0.979 / 0.979 / 0.978 / 0.974 → 0.984 / 0.981 /
0.978 / 0.979 / 0.976; LeNet after 500 training steps (``--trials 40``, B = 8 / 16 / 32 / 64 / 128)
0.981 / 0.917 / 0.878 / 0.873 / 0.875 → 0.969 / 0.909 / 0.876 / 0.874 / 0.875 → 0.975 / 0.914 /
0.876 / 0.874 / 0.875. The trained ConvNet-64 and ResNet-18 numbers in :mod:`gradleak.attacks.labels`
were measured with rounding.

LeNet's errors sit in the two or three classes it predicts for almost every image (5 and 3 at
seed 0), one sample moved between them in either direction. At seed 0 ẑ limits them: B = 16,
40 batches, 7 of 640 labels wrong; with the batch's true mean logit in place of ẑ, 1; with the
true spread or the true ``R`` instead, 7 and 6. ẑ's regression prior is off by 0.40 (centred logit
norm), the dummies' mean by 1.0 and the mean of the 932 training images by 0.77: a batch of 16
strays that far from any population mean. Other inits add a second limit, the shape of the
within-class spread: at seed 2 (B = 32, 40 batches; before the floor) 49 of 1280 wrong, 45 with the true ẑ and 31
with the true within-class deviations; there the dummies' logit spread is 0.96 along class 5
against the images' 1.50, which no single shrink factor fixes, and the training images in place
of the dummies (``--label-aux public``) still leave 0.959.

Part of that is a floor no prior removes. Batches drawn from the dummies themselves, with random
labels, match every assumption of the estimate; at seed 3, B = 32, 60 batches, rounding leaves 39
of 1920 labels wrong, and 26 with the batch's true ẑ. The two favoured classes' real-valued counts
err by 0.8 of a sample (standard deviation; 0.6 with the true ẑ), against 1.0 on the images: given
the class means, the counts still depend on which deviations the batch drew.

No linear read of the gradient does much better there (``benchmarks/label_ceiling.py``). A ridge
regression from the exact ``B ∇b`` and ``B ∇W Wᵀ`` to the counts was fit on 5000 such simulated
batches (dummy images, uniform labels) per init and B. On held-out simulated batches, drawn as its
training batches were, untrained LeNet (seeds 0–4, 100 batches each) gives 0.984 / 0.984 / 0.986 at
B = 16 / 32 / 64, and ``ilrg-dummy`` 0.983 / 0.982 / 0.982. On the images the ridge
gives 0.977 / 0.974 / 0.975 and ``ilrg-dummy`` 0.980 / 0.977 / 0.977.
Adding every other layer's gradient, projected at random to 3000 numbers, and fitting on 20000
batches changes little: 0.9794 → 0.9756 simulated and 0.9781 → 0.9775 on the images at seed 3,
B = 32; 0.9866 → 0.9861 and 0.9700 → 0.9725 at seed 1, B = 64 (same batches). So LeNet's target
of 0.99 at these B is beyond a linear read of the gradient, not only beyond this estimator.

All of the LeNet numbers above are for DLG's initialisation (uniform ±0.5, the models' default).
With PyTorch's own (``init="pytorch"``; the last layer's weights within ±0.036) an untrained LeNet
predicts nearly uniformly, the paper's setting, and ``ilrg-dummy`` recovers all 100 batches per B
exactly at B = 1 … 128 (CIFAR-10, seeds 0–4; ``gradleak labels --model lenet --init pytorch
--inits 5 --trials 100``); so do ``llg+``, ``llg*`` and ``geng``, while ``ilrg`` misses 2 batches
at B = 64 and 6 at B = 128. The paper's code sets its victim up the same way: the authors' LeNet5,
used for their batch-size experiments, initialises only its convolutions and keeps PyTorch's init
in its linear layers.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch

from ...errors import ConfigError
from ...threat import Observation
from .base import (
    LABEL_STRATEGIES,
    AuxData,
    LabelEstimate,
    LastLayer,
    labels_from_counts,
    present_at_least,
    read_last_layer,
    round_counts,
    sample_features,
)

_TINY = 1e-12  # relative floor on |∇b_c| so that ē_c stays finite
# Instance-wise factorisation: accepted only when it fits this well (scale-free squared residual).
# Exact fits land near 1e-12 from float32 gradients; the nearest wrong multisets stayed above 1e-5.
_FACTOR_TOLERANCE = 1e-8
_FACTOR_RESTARTS = 3
_FACTOR_NEIGHBOURS = 8  # other count vectors tried (one sample moved), most plausible first
_FACTOR_MIN_CONDITION = 1e-5  # smallest / largest singular value of ∇W the fit can use
# One step's gradient from B samples has rank B: the (B+1)-th singular value is float32 noise
# (~1e-8 of the largest on LeNet, ConvNet, ResNet-18), while two or more local steps (FedAvg) or DP
# noise raise it above 5e-5. Above this ratio no exact fit exists and none is tried.
_FACTOR_MAX_RANK_EXCESS = 1e-6
_MIN_WITHIN_SCALE = 0.8  # within_class_spread never shrinks the inputs' spread below this scale
_COUNT_FLOOR = 0.05  # counts below this are treated as this when dividing by k_c
_MAX_ITERATIONS = 50
# Decoding (count_covariance): the most principal axes of ẑ's uncertainty used, and a floor on the
# standard deviation of every count's error (a class no error source reaches keeps a finite precision).
_COVARIANCE_AXES = 16
_COUNT_NOISE_FLOOR = 0.01


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
    upper = torch.full_like(lower, float(batch_size))
    result = lsq_linear(system.numpy(), target.numpy(), bounds=(lower.numpy(), upper.numpy() + 1e-9), method="bvls")
    return torch.from_numpy(result.x).to(mean_probs.dtype)


def ilrg_real_counts(layer: LastLayer, batch_size: int) -> torch.Tensor:
    """Real-valued per-class counts of the paper's iLRG (steps 1–3)."""
    embeddings = layer.grad_weight / _safe_grad_bias(layer.grad_bias)[:, None]  # (C, D)
    mean_probs = torch.softmax(embeddings @ layer.weight.T + layer.bias, dim=1)  # row j: p̄_j
    return solve_counts(mean_probs, layer.grad_bias, batch_size)


def _require_bias(layer: LastLayer, method: str) -> None:
    if layer.bias is None or layer.grad_bias is None:
        raise ConfigError(f"{method} needs a bias in the last linear layer; use llg, geng or idlg for bias-free models")


def within_class_spread(spread: torch.Tensor, class_means: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Shrink the inputs' logit deviations to the within-class spread.

    The inputs' spread is the batch's total spread (within + between classes), but each class's
    predictions vary only by the within-class part around its own mean ``u_c``. Too wide a spread
    flattens the mean softmax of the dominant classes and biases their counts (on untrained
    LeNet: +1 for a minority class, −1 for the dominant one in most batches at B = 32). Scaled by
    ``α = √(1 − between / total)``, with ``between`` the count-weighted variance of the ``u_c``;
    both measured on softmax-invariant (row-centred) logits.

    ``α`` is kept at least :data:`_MIN_WITHIN_SCALE`. ``between`` comes from estimated class means
    and carries their noise, and the inputs' total can fall short of the images': at untrained
    LeNet seed 2 (B = 32) the dummies' total was 11 against the images' 13–17 and the estimated
    ``between`` 7–16 against a true 5–7, so ``α`` collapsed to a median 0.06 while the images'
    within-class spread was 0.9 of the dummies' scale. The other four inits gave a median ``α`` of
    0.82–0.89, which the floor leaves alone.
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


@LABEL_STRATEGIES.register("ilrg")
def ilrg(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """Counts from the linear system built on recovered class embeddings (needs a bias)."""
    batch_size = obs.require_batch_size()
    layer = read_last_layer(obs)
    _require_bias(layer, "ilrg")
    real = ilrg_real_counts(layer, batch_size)
    return LabelEstimate(counts=round_counts(real, batch_size), scores=real.float(), method="ilrg")


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

    The estimate uses their mean; a batch draws only a few deviations per class. Large where the
    model's predictions swing between a few classes from image to image: a standard deviation of
    0.7–1.5 samples for each of untrained LeNet's two favoured classes at B = 32 (seeds 0–4), against
    0.1–0.6 for ConvNet-64's classes at B = 64.
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
        moves = _one_moves(counts, real, lower)
        if not moves:
            break
        scores = distances(torch.stack(moves))
        i = int(scores.argmin())  # ties: the first, i.e. the move closest to the real counts
        if float(scores[i]) >= best - 1e-12:
            break
        counts, best = moves[i], float(scores[i])
    return counts


def factorisable(batch_size: int, num_classes: int, feature_dim: int) -> bool:
    """Whether the instance-wise fit is over-determined enough to tell multisets apart:
    ``(C − 1) B`` equations against ``B²`` unknowns, with a margin of two."""
    return 2 <= batch_size <= min((num_classes - 1) // 2, feature_dim)


RowSpace = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ∇W's top-B U (C, B), S (B,), Vᵀ (B, D)


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


def _one_moves(counts: torch.Tensor, real: torch.Tensor, lower: torch.Tensor) -> list[torch.Tensor]:
    """Count vectors one sample away from ``counts``, closest to the real-valued solution first."""
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
    for candidate in [counts] + _one_moves(counts, real, lower)[:_FACTOR_NEIGHBOURS]:
        labels = labels_from_counts(candidate)
        if fit_instances(layer, factors, labels, features, generator) < _FACTOR_TOLERANCE:
            return candidate
    return None


@LABEL_STRATEGIES.register("ilrg-dummy")
def ilrg_dummy(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """iLRG with class means and prediction spread corrected using dummy inputs (needs a bias).

    Given auxiliary public images, those replace the dummy inputs.
    """
    batch_size = obs.require_batch_size()
    layer = read_last_layer(obs)
    _require_bias(layer, "ilrg-dummy")
    lower = present_at_least(layer.grad_bias, batch_size)
    if int(lower.sum()) == batch_size:  # the exact bounds fix every count (at B = 1 unless p_y ≈ 1)
        return LabelEstimate(counts=lower, scores=lower.float(), method="ilrg-dummy")
    sample = sample_features(obs, batch_size, aux)
    estimate = _refine(layer, batch_size, sample.features)
    real = estimate.counts
    covariance = count_covariance(layer, batch_size, sample.features, estimate)
    counts = decode_counts(real, covariance, batch_size, lower)
    factorised = factorised_counts(layer, counts, real, lower, sample.features)
    return LabelEstimate(counts=counts if factorised is None else factorised, scores=real.float(), method="ilrg-dummy")
