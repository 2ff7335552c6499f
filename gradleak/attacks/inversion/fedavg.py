"""FedAvg-aware inversion: simulate the client's K local SGD steps on the dummy batch, differentiably,
and match the simulated weight change to the observed one.

Geiping et al., "Inverting Gradients" (NeurIPS 2020, §4 "multiple local steps"), and Dimitrov et al.,
"Data Leakage in Federated Averaging" (TMLR 2022). The unroll ``θ_{t+1} = θ_t − η ∇θ L(θ_t; x̂_{S_t}, y_{S_t})``
runs through ``torch.func.functional_call`` with the parameters as tensors and ``create_graph``, so
``Δ' = θ_K − θ_0`` is a differentiable function of the pixels; both ``Δ'`` and the observed Δ are read
in gradient units, ``−Δ/(Kη)``, and compared with the configured objective (cosine or L2).

Mini-batch order: the client (:func:`~gradleak.threat.simulate_client`) takes its first epoch in the
batch's natural order, then reshuffles with a permutation the server never sees. The attacker's
reconstruction has no natural order of its own either, so the first epoch is simulated in the
dummy batch's order (the optimisation is free to put each image where the client had it). For
later epochs we follow Dimitrov et al.'s point that the epoch order is unknown and must not be
guessed: each step of a reshuffled epoch uses the gradient of the whole dummy batch, the expectation
of the mini-batch gradient over the unknown permutation (exact when the weights move little within
an epoch). One dummy batch is shared by all epochs (the client's data are the same each epoch);
Dimitrov et al. instead keep one copy per epoch tied by a permutation-invariant prior.

The attacker's model here is a plain copy: :mod:`.attacker_layers` drops ``∂g/∂θ`` from the double
backward, which the unroll needs (θ_t depends on the pixels).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from ...errors import ConfigError
from ...models import last_linear
from ...threat import Observation
from .invert import GradientMatcher, InversionConfig, matching_terms
from .regularizers import lazy_weight

MODES = ("gradient", "unrolled", "unrolled-checkpoint")
K_GRID = (1, 2, 3, 5, 10, 20)  # local-step counts tried when the threat model withholds the schedule
PROBE_FRACTION = 0.25  # of the budget: the gradient-reading probe the schedule estimate starts from
REFINE_ITERATIONS = 30  # unrolled iterations refining the probe under each K of the grid


def step_plan(batch_size: int, local_batch_size: int | None, steps: int,
              generator: torch.Generator | None = None) -> list[Tensor | None]:
    """The samples of each local step, by :func:`~gradleak.threat.simulate_client`'s arithmetic.

    Until the client's first reshuffle the natural order; after it ``None`` (the whole batch: the
    order-invariant expectation), unless ``generator`` is the client's own (tests: then its
    permutations are replayed and the plan is the client's exactly).
    """
    n, mb = batch_size, local_batch_size or batch_size
    order, plan, shuffled = torch.arange(n), [], False
    for step in range(steps):
        if mb >= n:
            plan.append(order)
            continue
        first = (step * mb) % n
        if first == 0 and step > 0:
            shuffled = True
            if generator is not None:
                order = torch.randperm(n, generator=generator)
        plan.append(None if shuffled and generator is None else order[first : first + mb])
    return plan


def _step_gradient(model: nn.Module, names: list[str], buffers: dict, x: Tensor, y: Tensor, *theta: Tensor):
    """``∇θ CE(f_θ(x), y)`` at ``θ = theta``, with a graph back to ``x`` and ``theta``."""
    logits = functional_call(model, (dict(zip(names, theta)), buffers), (x,))
    # fp32 under autocast (as GradientMatcher), float64 kept (the tests gradcheck the unroll)
    loss = nn.functional.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(), y)
    return torch.autograd.grad(loss, theta, create_graph=torch.is_grad_enabled())


def simulate_delta(model: nn.Module, x: Tensor, y: Tensor, lr: float, plan: list[Tensor | None],
                   create_graph: bool = True, checkpointed: bool = False) -> list[Tensor]:
    """``θ_K − θ_0`` after the local steps of ``plan`` from ``model``'s weights on normalised inputs ``x``.

    ``create_graph``: keep the graph to ``x`` (the unroll). ``checkpointed``: store only each step's
    inputs and recompute its forward and inner backward during the outer backward
    (``torch.utils.checkpoint``): memory O(K·|θ|) instead of O(K·(activations + graph)), about one
    more forward-and-backward per step.
    """
    names = [n for n, _ in model.named_parameters()]
    # Copies: train-mode BN writes its running statistics, and ``model`` must stay as the server sent it.
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    start = [p.detach() for _, p in model.named_parameters()]
    theta = [t.requires_grad_(True) for t in (s.clone() for s in start)]
    for idx in plan:
        xb, yb = (x, y) if idx is None else (x[idx.to(x.device)], y[idx.to(y.device)])
        if not create_graph:
            theta = [t.detach().requires_grad_(True) for t in theta]
            with torch.enable_grad():
                grads = _step_gradient(model, names, buffers, xb.detach(), yb, *theta)
            grads = [g.detach() for g in grads]
        elif checkpointed:
            grads = checkpoint(_step_gradient, model, names, buffers, xb, yb, *theta, use_reentrant=False)
        else:
            grads = _step_gradient(model, names, buffers, xb, yb, *theta)
        theta = [t - lr * g for t, g in zip(theta, grads)]
    return [(t - s) if create_graph else (t - s).detach() for t, s in zip(theta, start)]


def as_gradient(delta: list[Tensor], lr: float, steps: int) -> list[Tensor]:
    """``−Δ / (K η)``: the scaling :meth:`~gradleak.threat.ClientUpdate.as_gradient` gives the observed Δ."""
    return [-d * (1.0 / (lr * steps)) for d in delta]


class UnrolledMatcher(GradientMatcher):
    """:class:`GradientMatcher` whose dummy "gradient" is the simulated client update ``−Δ'/(Kη)``.

    Needs the schedule (lr, K) in the observation: granted, or filled by :func:`with_schedule`.
    """

    def __init__(self, observation: Observation, config: InversionConfig, labels: Tensor):
        update = observation.update
        if config.fedavg_matching not in MODES:
            raise ConfigError(f"unknown fedavg_matching {config.fedavg_matching!r}; choose {', '.join(MODES)}")
        if update.kind != "fedavg" or not update.lr:
            raise ConfigError("unrolled matching needs a FedAvg update with its local schedule (lr, K); "
                              "without it, estimate the schedule first (fedavg.with_schedule)")
        # Not GradientMatcher.__init__: its patched layers cannot differentiate g with respect to θ.
        self.obs, self.config = observation, config
        self.model = copy.deepcopy(observation.model)
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.0  # repeated train-mode forwards leave the running statistics as sent
        self.model.requires_grad_(False)
        self.params = [p for p in self.model.parameters()]
        self.labels = labels.to(observation.device)
        self.objective, self.regularizers, self.dtype = matching_terms(observation, config, self.model)
        self.lr, self.steps = float(update.lr), int(update.local_steps)
        self.plan = step_plan(int(labels.shape[0]), update.local_batch_size, self.steps)
        self.checkpointed = config.fedavg_matching == "unrolled-checkpoint"

    def matching_loss(self, x: Tensor, create_graph: bool = True, step: int | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(matching, total)`` for images ``x`` (pixel space); ``step`` as in :class:`GradientMatcher`."""
        with self._autocast():
            delta = simulate_delta(self.model, self.obs.normalize(x), self.labels, self.lr, self.plan,
                                   create_graph=create_graph, checkpointed=self.checkpointed)
        matching = self.objective(as_gradient(delta, self.lr, self.steps))
        total = matching
        for reg, weight in self.regularizers:
            if hasattr(reg, "_terms") and hasattr(reg, "layers"):
                # bn_stats: the granted statistics are the client's first batch at θ_0, i.e. the
                # unroll's first forward (the prior would otherwise read the last one).
                reg._terms = reg._terms[: len(reg.layers)]
            weight = lazy_weight(weight, getattr(reg, "every", 1), step)
            if weight is not None:
                total = total + weight * reg(x)
        return matching, total


@dataclass
class ScheduleEstimate:
    """The client's local schedule as estimated from its update (the threat model withheld it):
    ``lr`` = ``total_step`` / ``local_steps``, local steps taken to use the whole batch.

    ``fit[K]``: relative L2 misfit ``‖Δ'(x̂_K; s_K/K, K) − Δ‖ / ‖Δ‖`` of grid value K after its
    refinement (``total_step`` is the best K's fitted ηK). Measured on LeNet/digits, B = 4, labels
    granted, 200-iteration budget: seeds 2–3 at (K, η) = (1, .1), (5, .05), (20, .01): ηK within 1 %,
    K exact but once 10 for 20; seeds 0–1 at (2, .1), (5, .05), (5, .1), (20, .01) too: ηK within 6 %,
    K within one grid step. The tests hold it to 10 % and one grid step.
    """

    lr: float
    local_steps: int
    total_step: float
    fit: dict[int, float]

    def to_dict(self) -> dict:
        return {**asdict(self), "fit": {str(k): round(v, 6) for k, v in self.fit.items()}}


def estimate_total_step(obs: Observation, labels: Tensor, images: Tensor) -> float:
    """A first guess of ηK from the output bias: each step's bias gradient is ``P̄_t − k/B`` (mean
    softmax minus the label histogram; iLRG's identity), so ``−Δb = ηK (P̄ − k/B)``. P̄ read at θ_0
    on ``images`` ignores the drift towards the labels, so this underestimates ηK (by 15–40 % on
    digits at K = 5); :func:`fit_total_step` corrects it."""
    _, bias_name = last_linear(obs.model)
    if bias_name is None:
        raise ConfigError("estimating the local schedule needs a bias in the last linear layer")
    delta_b = dict(zip(obs.update.names, obs.update.tensors))[bias_name].double()
    with torch.no_grad():
        probs = torch.softmax(obs.model(obs.normalize(images.to(obs.device))).double(), dim=1).mean(0)
    hist = torch.bincount(labels.long().to(obs.device), minlength=obs.num_classes).double() / labels.numel()
    u = probs - hist
    return float((-delta_b @ u) / (u @ u).clamp_min(1e-30))


def _flat(tensors) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]).double()


def fit_total_step(obs: Observation, labels: Tensor, images: Tensor, steps: int, start: float,
                   rounds: int = 5) -> tuple[float, float]:
    """``(ηK, misfit)``: the total step at which K = ``steps`` full-batch steps on ``images`` best
    reproduce Δ (fixed point of the least-squares scale ``s ← s ⟨Δ', Δ⟩ / ‖Δ'‖²``), and the relative
    L2 misfit there."""
    target, x, y = _flat(obs.update.tensors), obs.normalize(images.to(obs.device)), labels.long().to(obs.device)
    plan, s = step_plan(len(y), None, steps), start
    for i in range(rounds + 1):
        sim = _flat(simulate_delta(obs.model, x, y, s / steps, plan, create_graph=False))
        if i < rounds:
            s *= float(sim @ target / (sim @ sim).clamp_min(1e-300))
    return s, float((sim - target).norm() / target.norm().clamp_min(1e-300))


def estimate_schedule(obs: Observation, labels: Tensor, images: Tensor, config: InversionConfig,
                      grid: tuple[int, ...] = K_GRID, refine: int = REFINE_ITERATIONS) -> ScheduleEstimate:
    """Estimate (η, K) of a FedAvg update from probe reconstructions ``images`` (of the gradient
    reading). To second order ``Δ ≈ −ηK g + (ηK)² (1 − 1/K) Hg / 2``: ηK is first order, K enters
    only through 1 − 1/K (well told apart between 1 and a few steps, hardly beyond; so a wrong large K
    also costs little). The probe was fitted under the one-step reading and so favours K = 1; hence
    for every K of ``grid``: fit ηK (:func:`fit_total_step`), refine the probe by ``refine`` unrolled
    iterations under (ηK/K, K), refit ηK; keep the K with the lowest misfit."""
    from .invert import _optimise

    start = estimate_total_step(obs, labels, images)
    if not start > 0:
        raise ConfigError(f"the update's output bias gives no positive step size (ηK = {start:.3g})")
    cfg = replace(config, iterations=refine, restarts=1, lr_decay=False, fedavg_matching="unrolled")
    fits: dict[int, tuple[float, float]] = {}
    with tqdm(disable=True) as bar:
        for k in grid:
            total, _ = fit_total_step(obs, labels, images, k, start)
            trial = replace(obs, update=replace(obs.update, lr=total / k, local_steps=k, local_batch_size=None))
            refined = _optimise(UnrolledMatcher(trial, cfg, labels), images, cfg, bar, 0)[0]
            fits[k] = fit_total_step(obs, labels, refined, k, total)
    best = min(fits, key=lambda k: fits[k][1])
    total = fits[best][0]
    return ScheduleEstimate(lr=total / best, local_steps=best, total_step=total, fit={k: v[1] for k, v in fits.items()})


def with_schedule(obs: Observation, labels: Tensor, config: InversionConfig) -> tuple[Observation, ScheduleEstimate | None]:
    """``obs`` ready for unrolled matching: as it is when the schedule was granted (or the update is
    not FedAvg), else with (η, K) from :func:`estimate_schedule` on a gradient-reading probe of
    ``PROBE_FRACTION`` of the budget (extra work beside the main inversion's budget)."""
    update = obs.update
    if update.kind != "fedavg" or update.lr:
        return obs, None
    from .invert import invert

    probe_cfg = replace(config, iterations=max(1, int(config.iterations * PROBE_FRACTION)), restarts=1,
                        fedavg_matching="gradient")
    probe = invert(obs, labels, probe_cfg, progress=False).images.to(obs.device)
    estimate = estimate_schedule(obs, labels, probe, config)
    filled = replace(update, lr=estimate.lr, local_steps=estimate.local_steps, local_batch_size=None)
    return replace(obs, update=filled), estimate
