"""``rlu``: label counts from a multi-step FedAvg update by simulating the client's local training,
in the spirit of RLU (Chen & Vikalo 2024, "Recovering Labels from Local Updates in Federated
Learning", ICML).

Every other strategy reads a FedAvg delta as one gradient, ``g = −Δ / (K η)``. The bias identity
still holds exactly for the average over the K steps: with ``P̄ = (B / (K m)) Σ_t Σ_{n ∈ S_t} p_n^t``
(the batch's summed predictions averaged over the steps; m the local batch size, ``S_t`` step t's
samples), ``B g_b = P̄ − k``. But ``P̄`` drifts: the client fits its batch, each sample's prediction
moves towards its own label, and the dummies' predictions at θ_0 no longer estimate it. So:

1. send dummy inputs (:func:`~gradleak.attacks.labels.base.dummy_images`, or the aux images) in
   batches of B through a copy of the whole model and train each batch for K SGD steps with the
   known lr, local batch size and order, with labels drawn to the current counts k;
2. record ``π_j``, the mean prediction over the steps of a sample labelled j (:func:`simulate_mean_probs`);
3. solve iLRG's system ``Σ_j k_j π_j − k = B g_b`` with the exact bounds ``⌈−B g_b⌉ ≤ k ≤ B``
   (:func:`~gradleak.attacks.labels.ilrg.solve_counts_bounded`) and repeat from 1 with the new k;
4. round to integers summing to B (largest remainder, above the bounds).

Labels enter step 1 as hard labels, since the drift is each sample fitting its own label (its
features' norm, not the class's mean feature). FedSGD updates (and K = 1 full-batch steps, where
nothing drifts) go to ``ilrg-dummy`` unchanged; without the schedule
(``ThreatModel.knows_local_schedule``) so does a FedAvg delta, read as a gradient, and the estimate's
``method`` says so. Measurements: docs/labels.md, "FedAvg: simulating the local steps (rlu)".
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ...errors import ConfigError
from ...threat import Observation
from .base import LABEL_STRATEGIES, AuxData, LabelEstimate, dummy_images, present_at_least, read_last_layer, round_counts
from .ilrg import require_bias, solve_counts_bounded
from .ilrg_dummy import ilrg_dummy

METHOD = "rlu"
FALLBACK = "rlu (no local schedule: ilrg-dummy on the delta read as a gradient)"
_SIM_SAMPLES = 512  # dummy samples per simulation, in batches of B (at least _SIM_MIN_BATCHES batches)
_SIM_MIN_BATCHES = 4
_MAX_ROUNDS = 8  # simulate → solve rounds; each starts from the previous counts
_PER_CLASS = 4.0  # expected dummy samples of every class per simulation (a share of uniform labels)
_SEED = 0


def local_schedule(obs: Observation) -> Optional[tuple[float, int, Optional[int]]]:
    """``(lr, K, local batch size)`` of a FedAvg update whose schedule the threat model granted, else None."""
    update = obs.update
    if update.kind != "fedavg" or not update.lr:
        return None
    return float(update.lr), int(update.local_steps), update.local_batch_size


def _draw_labels(counts: torch.Tensor, batch_size: int, offset: float, generator: torch.Generator) -> torch.Tensor:
    """B labels whose class counts are ``counts`` rounded (systematic sampling at ``offset`` ∈ [0, 1)),
    shuffled. Over evenly spread offsets the mean count of class j is ``counts[j]``."""
    edges = torch.cumsum(counts / counts.sum() * batch_size, dim=0)
    positions = torch.arange(batch_size, dtype=edges.dtype) + offset
    labels = torch.searchsorted(edges, positions, right=True).clamp(max=len(counts) - 1)
    return labels[torch.randperm(batch_size, generator=generator)]


def _step_order(step: int, batch_size: int, local_batch_size: int, order: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples of local step ``step``, in :func:`~gradleak.threat.simulate_client`'s order: the
    batch as given for the first epoch, then a fresh permutation per epoch."""
    if local_batch_size >= batch_size:
        return order, order
    first = (step * local_batch_size) % batch_size
    if first == 0 and step > 0:
        order = torch.randperm(batch_size, generator=generator)
    return order[first : first + local_batch_size], order


def simulate_mean_probs(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, lr: float, steps: int,
                        local_batch_size: Optional[int], num_classes: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a private copy of ``model`` on each dummy batch as the client would and sum, per label,
    the predictions the local steps used.

    ``inputs`` (M, B, ...) are normalised dummy batches, ``labels`` (M, B). Returns ``(sums, seen)``:
    ``sums[j]`` the summed softmax over every step's appearances of samples labelled j, ``seen[j]``
    their number.
    """
    local = copy.deepcopy(model)
    params = [p for p in local.parameters()]
    start = [p.detach().clone() for p in params]
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    seen = torch.zeros(num_classes, dtype=torch.float64)
    batch_size = inputs.shape[1]
    mb = local_batch_size or batch_size
    device = start[0].device
    for x, y in zip(inputs, labels):
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        order = torch.arange(batch_size)
        for step in range(steps):
            idx, order = _step_order(step, batch_size, mb, order, generator)
            logits = local(x[idx].to(device))
            loss = nn.functional.cross_entropy(logits, y[idx].to(device))
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(lr * g)
            probs = torch.softmax(logits.detach().double().cpu(), dim=1)
            sums.index_add_(0, y[idx], probs)
            seen += torch.bincount(y[idx], minlength=num_classes).double()
    return sums, seen


def _dummy_batches(obs: Observation, batch_size: int, aux: Optional[AuxData], generator: torch.Generator) -> torch.Tensor:
    """(M, B, ...) normalised inputs: aux images when given, else :func:`dummy_images`."""
    batches = max(_SIM_MIN_BATCHES, -(-_SIM_SAMPLES // batch_size))
    if aux is not None:
        if tuple(aux.images.shape[1:]) != tuple(obs.input_shape):
            raise ConfigError(f"auxiliary images have shape {tuple(aux.images.shape[1:])}, the model expects {tuple(obs.input_shape)}")
        x = aux.images[torch.randint(len(aux.images), (batches * batch_size,), generator=generator)].float()
    else:
        x = dummy_images(batches * batch_size, obs.input_shape, generator)
    device = next(obs.model.parameters()).device
    return obs.normalize(x.to(device)).reshape(batches, batch_size, *obs.input_shape)


def rlu_real_counts(obs: Observation, batch_size: int, aux: Optional[AuxData] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-valued counts of a FedAvg observation with a known schedule, and their exact lower bounds."""
    schedule = local_schedule(obs)
    if schedule is None:
        raise ConfigError("rlu's simulation needs a FedAvg update with its local schedule (lr, K)")
    lr, steps, local_batch_size = schedule
    layer = read_last_layer(obs)
    require_bias(layer, METHOD)
    grad_bias = layer.grad_bias  # −Δb / (K η): the steps' mean bias gradient, exact
    lower = present_at_least(grad_bias, batch_size)
    if int(lower.sum()) == batch_size:
        return lower.double(), lower
    num_classes = obs.num_classes
    generator = torch.Generator().manual_seed(_SEED)
    inputs = _dummy_batches(obs, batch_size, aux, generator)
    batches = inputs.shape[0]
    with torch.no_grad():
        first = torch.softmax(obs.model(inputs.flatten(0, 1)).double().cpu(), dim=1)
    counts = (batch_size * first.mean(dim=0) - batch_size * grad_bias).clamp(min=0).maximum(lower.double())
    share = min(0.5, _PER_CLASS * num_classes / (batches * batch_size))  # every class gets simulated
    for _ in range(_MAX_ROUNDS):
        mix = (1 - share) * counts / counts.sum().clamp(min=1e-12) + share / num_classes
        round_gen = torch.Generator().manual_seed(_SEED + 1)  # the same draws every round
        labels = torch.stack([_draw_labels(mix, batch_size, (i + 0.5) / batches, round_gen) for i in range(batches)])
        sums, seen = simulate_mean_probs(obs.model, inputs, labels, lr, steps, local_batch_size, num_classes, round_gen)
        mean_probs = sums / seen.clamp(min=1)[:, None]
        unseen = seen == 0  # only when B · batches is tiny: the first-step mean prediction
        mean_probs[unseen] = first.mean(dim=0)
        updated = solve_counts_bounded(mean_probs, grad_bias, batch_size, lower.double())
        change = float((updated - counts).abs().max())
        settled = torch.equal(round_counts(updated, batch_size, lower), round_counts(counts, batch_size, lower))
        counts = updated
        if settled and change < 0.05:
            break
    return counts, lower


@LABEL_STRATEGIES.register(METHOD)
def rlu(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """Counts from a FedAvg delta by simulating the K local steps on dummy inputs (needs a bias).

    FedSGD updates and single full-batch steps get ``ilrg-dummy``'s answer, as does a FedAvg delta
    whose schedule the threat model withholds (``method`` then says so)."""
    batch_size = obs.require_batch_size()
    schedule = local_schedule(obs)
    if schedule is None or (schedule[1] == 1 and (schedule[2] or batch_size) >= batch_size):
        estimate = ilrg_dummy(obs, aux)
        method = FALLBACK if obs.update.kind == "fedavg" and schedule is None else METHOD
        return LabelEstimate(counts=estimate.counts, scores=estimate.scores, method=method)
    real, lower = rlu_real_counts(obs, batch_size, aux)
    return LabelEstimate(counts=round_counts(real, batch_size, lower), scores=real.float(), method=METHOD)
