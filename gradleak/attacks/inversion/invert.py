"""Gradient inversion: optimise dummy images until their gradient matches the observed one.

Geiping et al., "Inverting Gradients — How easy is it to break privacy in federated learning?"
(NeurIPS 2020) for the cosine recipe (signed Adam, step decay, box constraint, restarts) and
Zhu et al., "Deep Leakage from Gradients" (NeurIPS 2019) for L2 matching with L-BFGS.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import ConfigError
from ...runtime import resolve_precision
from ...threat import Observation
from .objectives import OBJECTIVES
from .defense_aware import aware_objective, clipped_mean_gradient, example_clip
from .attacker_layers import low_precision_copies, prepare_attacker_model
from .regularizers import REGULARIZERS, lazy_weight

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class InversionConfig:
    """Knobs of one reconstruction. Presets in :mod:`.presets` hold the papers' defaults."""

    objective: str = "cosine"
    regularizers: dict[str, float] = field(default_factory=lambda: {"tv": 0.05})
    optimizer: str = "adam"  # "adam" | "lbfgs"
    iterations: int = 1000
    restarts: int = 1
    lr: float = 0.1  # step size in normalised-input units (as in IG); pixel steps are lr × mean(std)
    signed: bool = True  # sign of the pixel gradient (IG)
    lr_decay: bool = True  # ×0.1 at 3/8, 5/8, 7/8 of the budget (IG)
    boxed: bool = True  # keep pixels in [0, 1]
    init: str = "randn"  # "randn" | "uniform" | "gray"
    precision: str = "fp32"  # autocast dtype for the forward/double-backward: fp32 | bf16 | fp16
    seed: int = 0
    # FedAvg: "gradient" reads Δ as −Δ/(Kη); "unrolled"/"unrolled-checkpoint" simulate the K local steps (.fedavg)
    fedavg_matching: str = "gradient"

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Raise ConfigError for a budget or step size no optimiser can run with."""
        if self.iterations < 1 or self.restarts < 1:
            raise ConfigError("iterations and restarts must be at least 1")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"the step size must be a positive number, got {self.lr}")


@dataclass
class Reconstruction:
    """The attack's best guess of the private batch, with the evidence for choosing it."""

    images: torch.Tensor  # B×C×H×W in [0, 1], the restart with the lowest final matching loss
    labels: torch.Tensor  # the labels the attack used (granted or recovered)
    matching_loss: float
    restart_losses: list[float]
    restart_images: list[torch.Tensor]
    iterations: int
    seconds: float
    history: list[tuple[int, float]]  # (iteration, matching loss) of the kept restart


def _init_images(shape, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "randn":
        # N(0,1) in normalised space is roughly N(0.5, 0.25) in pixels.
        return (0.5 + 0.25 * torch.randn(shape, generator=generator)).clamp(0, 1)
    if kind == "uniform":
        return torch.rand(shape, generator=generator)
    if kind == "gray":
        return torch.full(shape, 0.5)
    raise ConfigError(f"unknown init {kind!r}; choose randn, uniform or gray")


def pixel_lr(observation: Observation, config: InversionConfig) -> float:
    """Adam's step in pixel units: IG's ``config.lr`` is in normalised-input units, so × mean(std)."""
    std = observation.std
    return config.lr * (sum(std) / len(std) if std else 1.0)


def matching_terms(observation: Observation, config: InversionConfig, model: nn.Module):
    """The objective, the weighted regularisers and the autocast dtype one attack configuration asks for."""
    # knows_defense: the objective models the client's defences (.defense_aware); else the plain one.
    objective = aware_objective(observation, config.objective) or OBJECTIVES.get(config.objective)(observation.gradient())
    regularizers = [
        (REGULARIZERS.get(name)(observation, model), float(weight))
        for name, weight in config.regularizers.items()
        if weight
    ]
    precision = resolve_precision(config.precision, observation.device)  # auto: bf16 where native
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {config.precision!r}; choose auto, {', '.join(PRECISIONS)}")
    return objective, regularizers, PRECISIONS[precision]


def _step_milestones(iterations: int) -> list[int]:
    return [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]


class PixelAdam:
    """IG's pixel optimiser: Adam on the (signed) pixel gradient, step decay at 3/8, 5/8 and 7/8
    of the budget, and the [0, 1] box; shared by the sequential and the batched engines."""

    def __init__(self, x: torch.Tensor, lr: float, config: InversionConfig):
        self.x, self.config = x, config
        self.opt = torch.optim.Adam([x], lr=lr)
        self.sched = (torch.optim.lr_scheduler.MultiStepLR(self.opt, _step_milestones(config.iterations), gamma=0.1)
                      if config.lr_decay else None)

    def step(self, total: torch.Tensor) -> None:
        """One update of ``x`` down the gradient of the scalar ``total``."""
        (grad,) = torch.autograd.grad(total, [self.x])
        self.x.grad = grad.sign() if self.config.signed else grad
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        if self.config.boxed:
            with torch.no_grad():
                self.x.clamp_(0, 1)


class GradientMatcher:
    """Computes the matching loss (and regularisers) for dummy images against one observation.

    Holds the attacker's copy of the model with BN running statistics frozen (momentum 0), so
    repeated forwards in train mode do not drift the statistics the threat model granted, and
    layers with cheaper second derivatives (:mod:`.attacker_layers`).
    """

    def __init__(self, observation: Observation, config: InversionConfig, labels: torch.Tensor):
        self.obs = observation
        self.config = config
        self.model = copy.deepcopy(observation.model)
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.0
        prepare_attacker_model(self.model)
        self.params = [p for p in self.model.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.labels = labels.to(observation.device)
        self.objective, self.regularizers, self.dtype = matching_terms(observation, config, self.model)
        copies = low_precision_copies(self.model, self.dtype) if self.dtype is not None else {}
        self._low_params = [copies.get(id(p), p) for p in self.params]
        self.example_clip = example_clip(observation)  # dp-sgd's C when known, else None

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.params[0].device.type, dtype=self.dtype)

    def matching_loss(self, x: torch.Tensor, create_graph: bool = True,
                      step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(matching, total)`` for images ``x`` (pixel space) at optimisation step ``step``
        (a term with ``every`` > 1, the lazy guidance, counts only on its steps; :func:`lazy_weight`)."""
        with self._autocast():
            logits = self.model(self.obs.normalize(x))
            loss = nn.functional.cross_entropy(logits.float(), self.labels)
        params = self.params if self.dtype is None else self._low_params
        if self.example_clip is None:
            grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        else:  # dp-sgd known: the dummy's per-example gradients clipped and averaged as the client's were
            def example_loss(xi, yi):
                with self._autocast():
                    return nn.functional.cross_entropy(self.model(self.obs.normalize(xi)).float(), yi)
            grads = clipped_mean_gradient(example_loss, params, x, self.labels, self.example_clip, create_graph)
        matching = self.objective(grads)
        total = matching
        for reg, weight in self.regularizers:
            weight = lazy_weight(weight, getattr(reg, "every", 1), step)
            if weight is not None:
                total = total + weight * reg(x)
        return matching, total


def invert(
    observation: Observation,
    labels: torch.Tensor,
    config: InversionConfig = InversionConfig(),
    progress: bool = True,
) -> Reconstruction:
    """Reconstruct the client's batch from ``observation`` given the (granted or recovered) ``labels``.

    Runs ``config.restarts`` independent optimisations and keeps the one whose final matching
    loss is lowest.
    """
    b = int(labels.shape[0])
    if b < 1:
        raise ConfigError("the attack needs at least one label to reconstruct")
    config.check()
    shape = (b, *observation.input_shape)
    gen = torch.Generator().manual_seed(config.seed)
    matcher_class = GradientMatcher
    if config.fedavg_matching != "gradient" and observation.update.kind == "fedavg":
        from .fedavg import UnrolledMatcher as matcher_class  # fedavg.py imports this module
    matcher = matcher_class(observation, config, labels.long())
    start = time.perf_counter()
    results = []
    total_steps = config.iterations * config.restarts
    bar = tqdm(total=total_steps, disable=not progress, desc="inverting", unit="it", leave=False, mininterval=0.5)
    try:
        for restart in range(config.restarts):
            x0 = _init_images(shape, config.init, gen)
            results.append(_optimise(matcher, x0, config, bar, restart))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    losses = [r[1] for r in results]
    best = min(range(len(results)), key=lambda i: losses[i])
    return Reconstruction(
        images=results[best][0],
        labels=labels.clone(),
        matching_loss=losses[best],
        restart_losses=losses,
        restart_images=[r[0] for r in results],
        iterations=config.iterations,
        seconds=seconds,
        history=results[best][2],
    )


def _optimise(matcher: GradientMatcher, x0: torch.Tensor, config: InversionConfig, bar, restart: int):
    x = x0.to(matcher.obs.device).clone().requires_grad_(True)  # drawn on the CPU: reproducible anywhere
    history: list[tuple[int, float]] = []
    log_every = max(1, config.iterations // 50)
    if config.optimizer == "adam":
        optimiser = PixelAdam(x, pixel_lr(matcher.obs, config), config)
        for it in range(config.iterations):
            matching, total = matcher.matching_loss(x, step=it)
            optimiser.step(total)
            if it % log_every == 0 or it == config.iterations - 1:
                history.append((it, float(matching.detach())))
                bar.set_postfix(restart=restart, loss=f"{float(matching.detach()):.4g}")
            bar.update(1)
    elif config.optimizer == "lbfgs":
        opt = torch.optim.LBFGS([x], lr=config.lr, max_iter=20, history_size=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad(set_to_none=True)
            _, total = matcher.matching_loss(x, step=it)  # one objective within an L-BFGS step
            (x.grad,) = torch.autograd.grad(total, [x])
            return total

        for it in range(config.iterations):
            opt.step(closure)
            if config.boxed:
                with torch.no_grad():
                    x.clamp_(0, 1)
            if it % log_every == 0 or it == config.iterations - 1:
                with torch.enable_grad():
                    m, _ = matcher.matching_loss(x, create_graph=False)
                history.append((it, float(m)))
                bar.set_postfix(restart=restart, loss=f"{float(m):.4g}")
            bar.update(1)
    else:
        raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose adam or lbfgs")
    # Score the final images in fp32 so restarts and precisions compare on the same scale.
    final_cfg_dtype, matcher.dtype = matcher.dtype, None
    try:
        final, _ = matcher.matching_loss(x.detach().requires_grad_(False), create_graph=False)
    finally:
        matcher.dtype = final_cfg_dtype
    if not torch.isfinite(final):
        final = torch.tensor(float("inf"))
    return x.detach(), float(final), history
