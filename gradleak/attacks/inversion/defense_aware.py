"""Defence-aware gradient matching: the attacker knows the client's defences (``knows_defense``)
and models them, as the literature's adaptive attacks do (docs/ALGORITHMS.md, "Defence-aware attacks").

The defence record (:attr:`Observation.defenses`: names and parameters, never the noise draws or the
pruning mask) is read in the order the client applied it and turned into a :class:`Plan`:

- ``prune`` / ``sign``: only the observed nonzero coordinates enter the match (DLG, Zhu et al. 2019,
  §5 evaluates pruning; Wei et al. 2020, "A Framework for Evaluating Gradient Leakage Attacks in
  Federated Learning", ESORICS, match the compressed coordinates). The zeros of a pruned update are
  its mask; noise or rounding after the prune hides it, and the mask is then not used. ``sign``
  keeps one bit per entry: the dummy gradient is matched by cosine to the sign pattern.
- ``quantize``: stochastic rounding is unbiased (E Q(g) = g), so the plain objective already matches
  the expected update: nothing to undo.
- ``clip`` / ``client-dp`` (whole-update clipping to C): cosine is scale-free; under L2 the dummy
  gradient is clipped to C the same way before the match.
- ``dp-sgd``: the dummy batch's per-example gradients are clipped to C and averaged as the client
  did (:func:`clipped_mean_gradient`, sequential engine; Abadi et al. 2016).
- Gaussian noise (``client-dp``, ``dp-sgd``) of known std σ_n per coordinate: each coordinate is
  weighted by its Wiener gain ``w_i = ŝ_i² / (ŝ_i² + σ_n²)`` with the signal power estimated by
  power subtraction, ``ŝ_i² = max(t_i² − σ_n², 0)`` (Wiener 1949; Lim & Oppenheim 1979, "Enhancement
  and bandwidth compression of noisy speech", Proc. IEEE), i.e. ``w_i = max(0, 1 − σ_n²/t_i²)``:
  coordinates the noise swamps barely count, strong ones count fully. OFF by default
  (:data:`SNR_WEIGHTS`): measured on digits/LeNet with dp-sgd (σ = 0.01, 0.05; B = 1, 4) it lowered
  SSIM every time. The noise is white with one known σ_n, so the Gaussian likelihood of the
  observation is the *unweighted* L2 to the (clipped) dummy gradient; the Wiener gain ranks
  coordinates one by one, while a tensor of many weak coordinates carries n·SNR in aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ...threat import Observation

_TINY = 1e-12
# Weigh coordinates by their Wiener gain under known Gaussian noise (see the module docstring: off,
# because it measured worse than the unweighted match).
SNR_WEIGHTS = False


@dataclass
class Plan:
    """What the attacker undoes of the client's defences, in gradient units (the update read as
    :meth:`ClientUpdate.as_gradient`)."""

    steps: list[tuple[str, float]] = field(default_factory=list)  # ("clip", C) / ("mask", 0), client order
    masked: bool = False  # the observed zeros are the pruning mask
    sign: bool = False  # the update carries only signs
    noise_std: float = 0.0  # std of the Gaussian noise per coordinate
    example_clip: float | None = None  # dp-sgd's per-example C (the dummy's gradients are clipped likewise)


def plan(obs: Observation) -> Plan | None:
    """The :class:`Plan` for ``obs``'s defence record; None without one (or when nothing can be done:
    an aggregate of several clients, or a FedAvg update of unknown schedule)."""
    record = obs.defenses or []
    if not record or any(d["name"] == "secagg" and d.get("N", 1) > 1 for d in record):
        return None  # N clients' masks and clip factors are mixed in the mean: no per-client model
    scale = obs.update.gradient_scale()
    p, var, pruned = Plan(), 0.0, False
    for d in record:
        name = d["name"]
        if name in ("clip", "client-dp", "dp-sgd") and scale is None:
            return None  # C and σ are in update units; without η and K no gradient-space model
        if name == "dp-sgd":
            u = obs.update
            b = u.local_batch_size or obs.batch_size
            p.example_clip = float(d["C"])  # per-example gradients are gradients in any update kind
            # (1/b)(Σ clip(g_i) + N(0, σ²C²)); the mean of K independent steps divides the variance by K.
            # Without the batch size the noise per coordinate is unknown: no weights then.
            var += 0.0 if b is None else (d["sigma"] * d["C"] / b) ** 2 / (u.local_steps if u.kind == "fedavg" else 1)
        elif name in ("clip", "client-dp"):
            p.steps.append(("clip", float(d["C"]) * scale))
            # noise added before this clip shrinks by its unknown factor ≤ 1: var stays an upper bound
            if name == "client-dp":
                var += (d["sigma"] * d["C"] * scale) ** 2
                pruned = pruned and d["sigma"] == 0  # noise fills the zeros
        elif name == "prune":
            p.steps.append(("mask", 0.0))
            pruned = True
        elif name == "quantize":
            pruned = False  # rounding moves the zeros to the nearest levels: the mask is gone
        elif name == "sign":
            p.sign = True
    p.masked = pruned
    p.steps = [s for s in p.steps if s[0] == "clip" or pruned]
    p.noise_std = 0.0 if p.sign else var ** 0.5  # signs carry no magnitude to weigh
    return p


def pieces(obs: Observation, objective: str, per_example: bool = True, labels_recovered: bool = False) -> list[str]:
    """The names of the defence-aware pieces an attack on ``obs`` with ``objective`` uses
    (``per_example``: the engine clips the dummy's per-example gradients, the sequential one does;
    ``labels_recovered``: label recovery ran, and undid a clip where it found one)."""
    from ..labels.unclip import clip_scale

    p = plan(obs)
    if p is None:
        return []
    out = ["label-unclip"] if labels_recovered and clip_scale(obs) not in (None, 1.0) else []
    out += ["prune-mask"] if p.masked else []
    out += ["sign-pattern"] if p.sign else []
    if objective == "l2" and not p.sign and any(s[0] == "clip" for s in p.steps):
        out.append("clip-scale")
    out += ["per-example-clip"] if p.example_clip is not None and per_example else []
    out += ["snr-weights"] if p.noise_std > 0 and SNR_WEIGHTS else []
    return out


def wiener_weights(target: torch.Tensor, noise_std: float) -> torch.Tensor:
    """``max(0, 1 − σ_n² / t_i²)`` (0 where ``t_i = 0``): the Wiener gain with power subtraction."""
    t2 = target.double().square()
    w = (1 - noise_std ** 2 / t2.clamp_min(_TINY * _TINY)).clamp_min(0)
    return torch.where(t2 > 0, w, torch.zeros_like(w)).to(target.dtype)


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class AwareObjective:
    """The matching objective with the client's defences modelled (see the module docstring).

    Called with the dummy batch's gradient (the clipped per-example mean under dp-sgd), as the
    plain objectives of :mod:`.objectives` are; plain tensor ops only, so it also runs under
    ``vmap`` (the batched engine).
    """

    def __init__(self, target: Sequence[torch.Tensor], kind: str, p: Plan):
        t = _flat([x.detach().float() for x in target])
        self.kind = "cosine" if p.sign else kind  # signs have no scale to match by L2
        self.index = torch.nonzero(t).flatten() if p.masked or p.sign else None
        if self.index is not None:
            t = t[self.index]
        self.steps = p.steps if self.kind == "l2" else [s for s in p.steps if s[0] == "mask"]  # cosine: scale-free
        self.weights = wiener_weights(t, p.noise_std) if p.noise_std > 0 and SNR_WEIGHTS else None
        self.target = torch.sign(t) if p.sign else t
        if self.kind == "cosine":
            wt = self.target if self.weights is None else self.weights * self.target
            self.weighted_target = wt
            self.target_norm = (self.target * wt).sum().sqrt()

    def __call__(self, dummy: Sequence[torch.Tensor]) -> torch.Tensor:
        g = _flat(dummy).float()
        taken = False
        for op, c in self.steps:
            if op == "mask":
                g, taken = g[self.index], True
            else:  # the client clipped what it had at this point: the whole vector, or the kept entries
                g = g * (c / g.norm().clamp_min(_TINY)).clamp(max=1.0)
        if self.index is not None and not taken:
            g = g[self.index]
        if self.kind == "l2":
            d = (g - self.target).square()
            return (d if self.weights is None else self.weights * d).sum()
        g_norm = (g.square() if self.weights is None else self.weights * g.square()).sum().sqrt()
        return 1 - (g @ self.weighted_target) / (g_norm * self.target_norm).clamp_min(_TINY)


def aware_objective(obs: Observation, kind: str) -> AwareObjective | None:
    """The defence-aware version of objective ``kind`` (``l2`` / ``cosine``) for ``obs``, or None
    when the threat model grants no defence record (or none can be modelled)."""
    p = plan(obs)
    if p is None or kind not in ("l2", "cosine"):
        return None
    return AwareObjective(obs.gradient(), kind, p)


def clipped_mean_gradient(loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          params: Sequence[torch.Tensor], x: torch.Tensor, labels: torch.Tensor, C: float,
                          create_graph: bool = True) -> list[torch.Tensor]:
    """``(1/B) Σ_i g_i / max(1, ‖g_i‖₂/C)`` for the dummy batch: DP-SGD's clipped mean without its
    noise (Abadi et al. 2016). One backward per example, as the client computes it
    (:class:`~gradleak.defenses.dp_sgd.DPSGD`): exact for any module, and B is small; the clip
    factor stays differentiable, so the pixels feel it."""
    total: list[torch.Tensor] | None = None
    for i in range(x.shape[0]):
        g = torch.autograd.grad(loss_of(x[i:i + 1], labels[i:i + 1]), list(params), create_graph=create_graph)
        norm = torch.sqrt(sum(t.float().square().sum() for t in g))
        factor = (C / norm.clamp_min(_TINY)).clamp(max=1.0)
        g = [t * factor.to(t.dtype) for t in g]
        total = g if total is None else [a + b for a, b in zip(total, g)]
    assert total is not None, "an empty batch has no gradient"
    return [t / x.shape[0] for t in total]


def example_clip(obs: Observation) -> float | None:
    """dp-sgd's per-example clip norm C when the threat model grants the record, else None."""
    p = plan(obs)
    return None if p is None else p.example_clip
