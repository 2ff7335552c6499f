"""Many independent inversions of one observation as one computation (candidates × restarts).

Label search by guidance (Malcewicz et al. 2025) runs one reconstruction per candidate labelling,
and Inverting Gradients (Geiping et al. 2020) runs several restarts: all are independent problems
against the same model and the same observed update. Here they share one forward/backward:
``torch.func.vmap`` over problems of ``torch.func.grad`` of the client loss with respect to the
parameters (``functional_call``) gives every problem its own parameter gradient; each problem's
matching loss is computed from it; the sum over problems is differentiated to the pixels by ordinary
autograd (``torch.func.grad`` keeps the graph to outer tensors, i.e. ``create_graph`` semantics).
Problems are independent, so the gradient of the sum with respect to problem p's pixels is problem
p's own gradient, and one Adam over the stacked pixels is P independent Adams (its update is
elementwise). The result equals :func:`invert_sequential` (a Python loop) up to float rounding.

BatchNorm: each problem normalises with its own batch statistics and running statistics are never
updated (the sequential attacker's copy has momentum 0). The attacker's copy computes BN from plain
tensor ops: under ``vmap``, the fused kernel's batching rule gives a wrong double backward
(grad_input of ``native_batch_norm_backward``; pytorch/functorch#534, still wrong in torch 2.13:
0.1–1 % off in float64, where the decomposed form matches finite differences and the sequential
loop to 1e-16).
"""

from __future__ import annotations

import contextlib
import copy
import time
import types
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from ...errors import ConfigError
from ...threat import Observation
from .guidance import Guidance
from .invert import (GradientMatcher, InversionConfig, PixelAdam, Reconstruction, _init_images, _optimise,
                     matching_terms, pixel_lr)
from .regularizers import REGULARIZERS


@dataclass
class BatchedInversion:
    """One reconstruction per candidate (the best of its restarts) and its final losses (fp32).

    ``prior_losses[k]``: ``Σ λ_r r(x̂)`` over the config's regularisers (TV, ...) of candidate k's kept
    restart; ``guidance_losses[k]``: its unweighted mean guidance loss (None without guidance).
    """

    reconstructions: list[Reconstruction]
    prior_losses: list[float]
    guidance_losses: list[float] | None
    seconds: float


def _batch_norm_forward(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """BatchNorm from plain ops: batch statistics in train mode (or without running statistics),
    running statistics in eval mode; never writes the buffers (vmap-safe)."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    if self.training or self.running_mean is None:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
    else:
        mean, var = self.running_mean.view(shape), self.running_var.view(shape)
    out = (x - mean) * torch.rsqrt(var + self.eps)
    if self.weight is not None:
        out = out * self.weight.view(shape) + self.bias.view(shape)
    return out


def decompose_batch_norm(model: nn.Module) -> nn.Module:
    """Make every BatchNorm layer of ``model`` (in place) compute from plain ops and never update its
    running statistics. The modules stay BatchNorm instances with their buffers, so the ``bn_stats``
    prior's hooks still find them."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
            m.forward = types.MethodType(_batch_norm_forward, m)
    return model


def _check_labels(labels: Tensor, num_classes: int) -> Tensor:
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.dim() == 1:
        labels = labels.unsqueeze(0)
    if labels.dim() != 2 or labels.shape[0] < 1 or labels.shape[1] < 1:
        raise ConfigError(f"batched inversion needs labels shaped (candidates, batch); got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes - 1}]")
    return labels


class BatchedMatcher:
    """Matching loss and priors of P independent problems ``x`` (P, B, C, H, W) with labels (P, B)."""

    def __init__(self, observation: Observation, config: InversionConfig, labels: Tensor,
                 guidance: Guidance | None = None, guidance_targets: Tensor | None = None):
        self.obs = observation
        self.config = config
        self.labels = labels
        self.model = decompose_batch_norm(copy.deepcopy(observation.model))
        self.model.requires_grad_(False)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.params = {n: p.detach() for n, p in self.model.named_parameters()}
        self.buffers = {n: b for n, b in self.model.named_buffers()}
        self.objective, self.regularizers, self.dtype = matching_terms(observation, config, self.model)
        self.guidance = guidance if guidance is not None and guidance.weight else None
        self.guidance_targets = guidance_targets
        if self.guidance is not None and (guidance_targets is None or guidance_targets.shape != labels.shape):
            raise ConfigError("guidance needs one guidance class per reconstructed image")

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=next(iter(self.params.values())).device.type, dtype=self.dtype)

    def _one(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One problem (inside vmap): its matching loss and its weighted prior terms."""

        def client_loss(params):
            logits = functional_call(self.model, (params, self.buffers), (self.obs.normalize(x),))
            loss = nn.functional.cross_entropy(logits.float(), labels)
            # Priors that read the forward pass (bn_stats hooks) must be evaluated inside it.
            priors = [weight * reg(x) for reg, weight in self.regularizers]
            return loss, (torch.stack(priors).sum() if priors else x.new_zeros(()))

        grads, prior = grad(client_loss, has_aux=True)(self.params)
        return self.objective([grads[n] for n in self.names]), prior

    def losses(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(matching (P,), total (P,), guidance (P,) or None)``; total carries the graph to ``x``."""
        with self._autocast():
            matching, prior = vmap(self._one)(x, self.labels)
        total = matching + prior
        guide = None
        if self.guidance is not None:
            guide = self.guidance.per_candidate(x, self.guidance_targets)
            total = total + self.guidance.weight * guide
        return matching, total, guide

    def final_losses(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(matching, prior, guidance)`` in fp32 without a graph: the scores restarts and candidates
        are compared on (as :func:`invert` scores its final images)."""
        dtype, self.dtype = self.dtype, None
        try:
            with torch.no_grad():  # torch.func.grad still differentiates inside; no outer graph
                matching, prior = vmap(self._one)(x.detach(), self.labels)
                guide = None if self.guidance is None else self.guidance.per_candidate(x, self.guidance_targets)
        finally:
            self.dtype = dtype
        matching = torch.where(torch.isfinite(matching), matching, torch.full_like(matching, float("inf")))
        return matching, prior, guide


def _initial_images(labels: Tensor, observation: Observation, config: InversionConfig, inits: Tensor | None) -> Tensor:
    """Starting pixels (K, R, B, C, H, W). By default restart r of every candidate starts from the
    image :func:`invert` would draw for restart r (same seed): common random numbers, so candidates
    differ only in their labels/guidance, and candidate k equals ``invert`` run alone."""
    k, b = labels.shape
    shape = (b, *observation.input_shape)
    r = config.restarts
    if inits is None:
        gen = torch.Generator().manual_seed(config.seed)
        x0 = torch.stack([_init_images(shape, config.init, gen) for _ in range(r)])
        return x0.unsqueeze(0).expand(k, *x0.shape).clone()
    inits = torch.as_tensor(inits, dtype=torch.float32)
    if tuple(inits.shape) == (k, *shape):
        inits = inits.unsqueeze(1)
    if tuple(inits.shape) != (k, r, *shape):
        raise ConfigError(f"inits must be shaped {(k, *shape)} or {(k, r, *shape)}; got {tuple(inits.shape)}")
    return inits.clone()


def _check_problem(observation, labels, config, guidance, guidance_targets):
    """Validated ``(labels, guidance_targets)``; the targets default to the labels when guided."""
    labels = _check_labels(labels, observation.num_classes)
    config.check()
    if guidance is not None and guidance_targets is None:
        guidance_targets = labels
    if guidance_targets is not None:
        guidance_targets = _check_labels(guidance_targets, observation.num_classes)
        if guidance_targets.shape != labels.shape:
            raise ConfigError(f"guidance targets {tuple(guidance_targets.shape)} do not match labels {tuple(labels.shape)}")
    return labels, guidance_targets


def invert_batched(
    observation: Observation,
    labels: Tensor,
    config: InversionConfig = InversionConfig(),
    guidance: Guidance | None = None,
    guidance_targets: Tensor | None = None,
    inits: Tensor | None = None,
    progress: bool = False,
) -> BatchedInversion:
    """Reconstruct K candidates × ``config.restarts`` restarts at once.

    ``labels`` (K, B): each candidate's labels for the client loss; ``guidance_targets`` (K, B): each
    image's guidance class (default: its label); ``inits`` (K, B, C, H, W) or (K, R, B, C, H, W)
    pixels (default: :func:`invert`'s draws, shared by all candidates). Per candidate the restart
    with the lowest final matching loss is kept. Adam only: L-BFGS line searches couple problems.
    """
    labels, guidance_targets = _check_problem(observation, labels, config, guidance, guidance_targets)
    if config.optimizer != "adam":
        raise ConfigError(f"batched inversion needs the adam optimiser (got {config.optimizer!r}); "
                          "L-BFGS line searches cannot be batched across candidates")
    k, b = labels.shape
    r = config.restarts
    x0 = _initial_images(labels, observation, config, inits)
    # Problem p = candidate p // R, restart p % R.
    flat_labels = labels.repeat_interleave(r, dim=0)
    flat_targets = guidance_targets.repeat_interleave(r, dim=0) if guidance_targets is not None else None
    matcher = BatchedMatcher(observation, config, flat_labels, guidance, flat_targets)

    start = time.perf_counter()
    x = x0.reshape(k * r, *x0.shape[2:]).requires_grad_(True)
    optimiser = PixelAdam(x, pixel_lr(observation, config), config)
    log_every = max(1, config.iterations // 50)
    history: list[tuple[int, list[float]]] = []
    bar = tqdm(total=config.iterations, disable=not progress, desc=f"inverting {k * r} at once", unit="it",
               leave=False, mininterval=0.5)
    try:
        for it in range(config.iterations):
            matching, total, _ = matcher.losses(x)
            optimiser.step(total.sum())
            if it % log_every == 0 or it == config.iterations - 1:
                values = matching.detach().tolist()
                history.append((it, values))
                bar.set_postfix(best=f"{min(values):.4g}")
            bar.update(1)
    finally:
        bar.close()
    final_matching, final_prior, final_guide = matcher.final_losses(x)
    seconds = time.perf_counter() - start

    images = x.detach().view(k, r, *x.shape[1:])
    m = final_matching.view(k, r)
    recons, priors, guides = [], [], []
    for c in range(k):
        best = int(torch.argmin(m[c]))  # first minimum, as min() over restarts in invert
        p = c * r + best
        recons.append(Reconstruction(
            images=images[c, best].clone(),
            labels=labels[c].clone(),
            matching_loss=float(m[c, best]),
            restart_losses=[float(v) for v in m[c]],
            restart_images=[images[c, j].clone() for j in range(r)],
            iterations=config.iterations,
            seconds=seconds / k,
            history=[(it, vals[p]) for it, vals in history],
        ))
        priors.append(float(final_prior[p]))
        if final_guide is not None:
            guides.append(float(final_guide[p]))
    return BatchedInversion(recons, priors, guides if final_guide is not None else None, seconds)


def guided_matcher(observation: Observation, config: InversionConfig, labels: Tensor,
                   guidance: Guidance | None = None, targets: Tensor | None = None):
    """One problem's :class:`GradientMatcher` with the ``guidance`` regulariser toward ``targets``
    added (when there is guidance); returns ``(matcher, guidance term or None)``."""
    matcher = GradientMatcher(observation, config, labels)
    if guidance is None or not guidance.weight:
        return matcher, None
    term = REGULARIZERS.get("guidance")(observation, matcher.model, guide=guidance.guide, targets=targets)
    matcher.regularizers.append((term, guidance.weight))
    return matcher, term


def invert_sequential(
    observation: Observation,
    labels: Tensor,
    config: InversionConfig = InversionConfig(),
    guidance: Guidance | None = None,
    guidance_targets: Tensor | None = None,
    inits: Tensor | None = None,
    progress: bool = False,
) -> BatchedInversion:
    """The same K × R problems as :func:`invert_batched`, one at a time through :func:`invert`'s own
    loop (:class:`GradientMatcher` plus the ``guidance`` regulariser): the reference the batched
    search is tested and benchmarked against, and the path for L-BFGS."""
    labels, guidance_targets = _check_problem(observation, labels, config, guidance, guidance_targets)
    k, r = labels.shape[0], config.restarts
    x0 = _initial_images(labels, observation, config, inits)
    start = time.perf_counter()
    recons, priors, guides = [], [], []
    bar = tqdm(total=k * r * config.iterations, disable=not progress, desc="inverting", unit="it", leave=False,
               mininterval=0.5)
    try:
        for c in range(k):
            plain = GradientMatcher(observation, config, labels[c])
            matcher, guide_term = guided_matcher(observation, config, labels[c], guidance,
                                                 None if guidance_targets is None else guidance_targets[c])
            runs = [_optimise(matcher, x0[c, j], config, bar, j) for j in range(r)]
            losses = [run[1] for run in runs]
            best = min(range(r), key=lambda j: losses[j])
            x_best = runs[best][0]
            # Priors from a matcher without guidance (bn_stats reads the forward pass it runs).
            with torch.enable_grad():
                m_best, t_best = plain.matching_loss(x_best, create_graph=False)
            prior = float(t_best - m_best)
            with torch.no_grad():
                guide = float(guide_term(x_best)) if guide_term is not None else None
            recons.append(Reconstruction(
                images=x_best, labels=labels[c].clone(), matching_loss=losses[best], restart_losses=losses,
                restart_images=[run[0] for run in runs], iterations=config.iterations,
                seconds=0.0, history=runs[best][2],
            ))
            priors.append(prior)
            if guide is not None:
                guides.append(guide)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    for rec in recons:
        rec.seconds = seconds / k
    return BatchedInversion(recons, priors, guides if guides else None, seconds)

