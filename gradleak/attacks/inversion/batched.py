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
    restart; ``guidance_losses[k]``: its unweighted mean guidance loss (None without guidance; None
    for a candidate successive halving dropped, whose guide is not run).
    """

    reconstructions: list[Reconstruction]
    prior_losses: list[float]
    guidance_losses: list[float | None] | None
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
        self.labels = labels.to(observation.device)
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

    def losses(self, x: Tensor, step: int | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(matching (P,), total (P,), guidance (P,) or None)`` at optimisation step ``step``;
        total carries the graph to ``x``. Guidance None also off a lazy guide's steps (``every``)."""
        with self._autocast():
            matching, prior = vmap(self._one)(x, self.labels)
        total = matching + prior
        guide = None
        weight = self.guidance.weight_at(step) if self.guidance is not None else None
        if weight is not None:
            guide = self.guidance.per_candidate(x, self.guidance_targets)
            total = total + weight * guide
        return matching, total, guide

    def final_losses(self, x: Tensor, with_guidance: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(matching, prior, guidance)`` in fp32 without a graph: the scores restarts and candidates
        are compared on (as :func:`invert` scores its final images); guidance None without
        ``with_guidance`` (or without a guide)."""
        dtype, self.dtype = self.dtype, None
        try:
            with torch.no_grad():  # torch.func.grad still differentiates inside; no outer graph
                matching, prior = vmap(self._one)(x.detach(), self.labels)
                guide = (self.guidance.per_candidate(x, self.guidance_targets)
                         if self.guidance is not None and with_guidance else None)
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
    if config.fedavg_matching != "gradient" and observation.update.kind == "fedavg":  # unrolled: invert() only
        raise ConfigError("guided/batched inversion matches gradients only: use fedavg_matching gradient with guidance")
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
    run = BatchedRun(observation, labels, config, guidance, guidance_targets, inits, progress)
    try:
        run.advance(config.iterations)
        return run.finish()
    finally:
        run.close()


class BatchedRun:
    """The optimisation of :func:`invert_batched`, advanced in segments (for successive halving,
    :mod:`.schedules`): :meth:`advance` runs up to an iteration, :meth:`scores` gives the fp32
    losses of the candidates still running, :meth:`drop` takes candidates out (their reconstruction
    as it stands is kept for the record) and :meth:`finish` scores and returns every candidate.
    Survivors keep their pixels, Adam moments, step count and lr schedule (milestones of the FULL
    budget), so a survivor continues the trajectory it had. With no one dropped this is
    :func:`invert_batched` bit for bit; after a drop the vmapped batch is smaller, so a survivor
    equals its exhaustive run up to float rounding (and, with guide views > 1, the views' draws
    differ: they are drawn per image alive)."""

    def __init__(self, observation: Observation, labels: Tensor, config: InversionConfig,
                 guidance: Guidance | None = None, guidance_targets: Tensor | None = None,
                 inits: Tensor | None = None, progress: bool = False):
        labels, guidance_targets = _check_problem(observation, labels, config, guidance, guidance_targets)
        if config.optimizer != "adam":
            raise ConfigError(f"batched inversion needs the adam optimiser (got {config.optimizer!r}); "
                              "L-BFGS line searches cannot be batched across candidates")
        self.obs, self.config, self.labels = observation, config, labels
        k, self.r = labels.shape[0], config.restarts
        x0 = _initial_images(labels, observation, config, inits).to(observation.device)  # CPU draws, moved
        # Problem p = candidate p // R, restart p % R.
        flat_labels = labels.repeat_interleave(self.r, dim=0)
        flat_targets = guidance_targets.repeat_interleave(self.r, dim=0) if guidance_targets is not None else None
        self.matcher = BatchedMatcher(observation, config, flat_labels, guidance, flat_targets)
        self.alive = list(range(k))  # candidate ids still optimised, in order of the rows of x
        self.x = x0.reshape(k * self.r, *x0.shape[2:]).requires_grad_(True)
        self.optimiser = PixelAdam(self.x, pixel_lr(observation, config), config)
        self.it = 0
        self.log_every = max(1, config.iterations // 50)
        self.history: list[list[tuple[int, float]]] = [[] for _ in range(k * self.r)]  # by problem id
        self.results: dict[int, tuple[Reconstruction, float, float | None]] = {}
        self.seconds = 0.0
        self.bar = tqdm(total=config.iterations, disable=not progress, desc=f"inverting {k * self.r} at once",
                        unit="it", leave=False, mininterval=0.5)

    def _problems(self) -> list[int]:
        return [c * self.r + j for c in self.alive for j in range(self.r)]

    def advance(self, until: int) -> None:
        """Optimise the candidates alive up to iteration ``until`` (≤ the config's iterations)."""
        start, problems = time.perf_counter(), self._problems()
        for it in range(self.it, min(until, self.config.iterations)):
            matching, total, _ = self.matcher.losses(self.x, step=it)
            self.optimiser.step(total.sum())
            if it % self.log_every == 0 or it == self.config.iterations - 1:
                values = matching.detach().tolist()
                for p, v in zip(problems, values):
                    self.history[p].append((it, v))
                self.bar.set_postfix(best=f"{min(values):.4g}")
            self.bar.update(1)
            self.it = it + 1
        self.seconds += time.perf_counter() - start

    def scores(self, with_guidance: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """fp32 ``(matching, prior, guidance or None)`` of the alive candidates, each (alive, R).
        Without ``with_guidance`` the guide is not run (its view draws are left untouched)."""
        start = time.perf_counter()
        m, p, g = self.matcher.final_losses(self.x, with_guidance)
        self.seconds += time.perf_counter() - start
        shape = (len(self.alive), self.r)
        return m.view(shape), p.view(shape), None if g is None else g.view(shape)

    def _record(self, candidates: list[int], scores: tuple[Tensor, Tensor, Tensor | None]) -> None:
        m, prior, guide = scores
        images = self.x.detach().view(len(self.alive), self.r, *self.x.shape[1:])
        for c in candidates:
            q = self.alive.index(c)
            best = int(torch.argmin(m[q]))  # first minimum, as min() over restarts in invert
            rec = Reconstruction(
                images=images[q, best].clone(), labels=self.labels[c].clone(), matching_loss=float(m[q, best]),
                restart_losses=[float(v) for v in m[q]], restart_images=[images[q, j].clone() for j in range(self.r)],
                iterations=self.it, seconds=0.0, history=self.history[c * self.r + best],
            )
            self.results[c] = (rec, float(prior[q, best]), None if guide is None else float(guide[q, best]))

    def drop(self, candidates: list[int], scores: tuple[Tensor, Tensor, Tensor | None]) -> None:
        """Stop optimising ``candidates`` (ids), recording them as they stand (``scores`` from
        :meth:`scores` at this iteration); the others continue with their optimiser state."""
        gone = set(candidates)
        if not gone:
            return
        self._record(sorted(gone), scores)
        keep = [q for q, c in enumerate(self.alive) if c not in gone]
        rows = torch.tensor([q * self.r + j for q in keep for j in range(self.r)], dtype=torch.long)
        x = self.x.detach()[rows].clone().requires_grad_(True)
        old, new = self.optimiser, PixelAdam(x, pixel_lr(self.obs, self.config), self.config)
        state = old.opt.state_dict()  # moments (rows), step count and the current lr
        state["state"] = {key: {n: v[rows] if torch.is_tensor(v) and v.dim() > 0 else v for n, v in s.items()}
                          for key, s in state["state"].items()}
        new.opt.load_state_dict(state)
        if old.sched is not None:
            new.sched.load_state_dict(old.sched.state_dict())
        self.x, self.optimiser = x, new
        self.matcher.labels = self.matcher.labels[rows]
        if self.matcher.guidance_targets is not None:
            self.matcher.guidance_targets = self.matcher.guidance_targets[rows]
        self.alive = [self.alive[q] for q in keep]

    def finish(self) -> BatchedInversion:
        """Score the candidates still alive and return every candidate's reconstruction, in id order."""
        self._record(list(self.alive), self.scores(with_guidance=True))
        self.close()
        k = self.labels.shape[0]
        for rec, _, _ in self.results.values():
            rec.seconds = self.seconds / k
        ordered = [self.results[c] for c in range(k)]
        guides = [g for _, _, g in ordered] if self.matcher.guidance is not None else None
        return BatchedInversion([rec for rec, _, _ in ordered], [p for _, p, _ in ordered], guides, self.seconds)

    def close(self) -> None:
        self.bar.close()


def guided_matcher(observation: Observation, config: InversionConfig, labels: Tensor,
                   guidance: Guidance | None = None, targets: Tensor | None = None):
    """One problem's :class:`GradientMatcher` with the ``guidance`` regulariser toward ``targets``
    added (when there is guidance); returns ``(matcher, guidance term or None)``."""
    matcher = GradientMatcher(observation, config, labels)
    if guidance is None or not guidance.weight:
        return matcher, None
    term = REGULARIZERS.get("guidance")(observation, matcher.model, guide=guidance.guide, targets=targets,
                                        every=guidance.every)
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

