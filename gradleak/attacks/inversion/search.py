"""Guided reconstruction and label search by guidance (Malcewicz, Stępka, Turner, Dubrawski 2025).

Modes (:data:`GUIDANCE_MODES`):

- ``none``: the plain inversion (:func:`~gradleak.attacks.inversion.invert`).
- ``oracle``: guidance with the TRUE labels, which only the evaluator has: an upper bound on what
  guidance adds to reconstruction quality, not an attack. The client-loss labels stay the attack's.
- ``search``: one guided reconstruction per candidate, all in one batched computation
  (:func:`~gradleak.attacks.inversion.batched.invert_batched`); the candidate whose final
  ``L_grad`` is lowest gives the recovered labels and the kept reconstruction. The guidance term is
  never compared (each candidate biases it toward its own class); adding the TV prior
  (``selection="matching+prior"``, docs/ALGORITHMS.md's "(+ TV)") is an option, not the default: over
  the digits and CIFAR-10 settings measured it was never more accurate and usually less (e.g. digits,
  B = 1, 200 iterations: 0.80 by L_grad vs 0.70 by L_grad + TV over 20 batches).

Schedules (``schedule``, :mod:`.schedules`): ``exhaustive`` runs every candidate for the full budget;
``halving`` races them by successive halving on the same score (rungs at T/9 and T/3 for 10
candidates, η = 3), survivors continuing their optimisation, the last few running the full budget.

What a candidate changes (``search_space``):

- ``labels``: the candidate labelling is used for BOTH the client loss and the guidance (the labels
  are the unknowns; gradient matching itself also scores them).
- ``guidance``: the client-loss labels are the attack's (granted or recovered from the gradient) and
  only the guidance varies, so the choice reflects what guidance alone reveals (the seed's claim).
  With weight 0 every candidate is then the same problem and the pick is arbitrary (a control).

Candidate enumeration (:func:`enumerate_candidates`), bounded by ``max_candidates``:

- B = 1: every class (the top ``max_candidates`` by gradient evidence if there are more classes).
- B > 1: a candidate is a label MULTISET placed on the slots in sorted order. Permutations are not
  enumerated: the client gradient is a sum over the batch, so permuting labels over slots whose
  initial images are i.i.d. is the same problem with re-ordered inits (a restart, not a new label
  hypothesis). With counts recovered from the gradient, the candidates are the recovered multiset
  and every multiset one substitution away (replace one sample's class by another): at most
  ``1 + d (C − 1)`` for d distinct recovered classes (≤ 19 for B = 2, C = 10), so the search can
  repair one count error at a cost linear in B and C; beyond the cap, the substitutions the gradient
  evidence ranks most plausible are kept. Without counts: all multisets over the top-m classes by
  gradient evidence (``−∇b_c``, or ``−s_c`` without a bias), m the largest with
  ``C(m + B − 1, B) ≤ max_candidates``; if even m = B does not fit, a seeded sample of them.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import Registry
from ...threat import Observation
from .batched import invert_batched, invert_sequential
from .guidance import Guidance, build_guide
from .invert import InversionConfig, Reconstruction, invert
from .schedules import DEFAULT_ETA, SEARCH_SCHEDULES, Rung, RungRecord, halving_rungs, invert_halving

SEARCH_SPACES = ("labels", "guidance")
SELECTIONS = ("matching", "matching+prior")
DEFAULT_MAX_CANDIDATES = 24


@dataclass
class CandidateLoss:
    """One candidate's final losses (fp32, on its kept restart)."""

    labels: list[int]  # client-loss labels of the slots
    guidance: list[int]  # guidance class of each slot
    matching_loss: float  # final L_grad
    prior_loss: float  # final Σ λ_r r(x̂) (TV, ...)
    guidance_loss: float | None  # final mean guidance loss, unweighted
    score: float  # what the search compared (lower is better)
    # Successive halving only (None under the exhaustive schedule, and then not written):
    rung_losses: list[float] | None = None  # L_grad at each rung the candidate reached
    dropped_at_rung: int | None = None  # index of the rung that dropped it; None: ran the full budget
    iterations: int | None = None  # iterations it ran (its losses above are from then)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (result.json is written without NaN/inf: a diverged candidate's losses are None)."""
        out = {"labels": self.labels, "guidance": self.guidance, "matching_loss": _finite(self.matching_loss),
               "prior_loss": _finite(self.prior_loss), "guidance_loss": _finite(self.guidance_loss),
               "score": _finite(self.score)}
        if self.rung_losses is not None:
            out.update(rung_losses=[_finite(v) for v in self.rung_losses], dropped_at_rung=self.dropped_at_rung,
                       iterations=self.iterations)
        return out


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


@dataclass
class GuidanceOutcome:
    """The result of :func:`run_guided`: the kept reconstruction and the search's evidence."""

    mode: str
    guide: str | None
    weight: float
    search_space: str | None
    labels: Tensor  # client-loss labels of the kept reconstruction
    guidance_labels: Tensor | None  # guidance class per slot of the kept reconstruction
    reconstruction: Reconstruction
    candidates: list[CandidateLoss] = field(default_factory=list)
    chosen: int = 0
    seconds: float = 0.0
    schedule: str = "exhaustive"
    rungs: list[RungRecord] = field(default_factory=list)

    @property
    def search_labels(self) -> Tensor | None:
        """The labels the search recovered (the chosen candidate's guidance), None unless searching."""
        return self.guidance_labels if self.mode == "search" else None

    def summary(self) -> dict[str, Any]:
        """JSON-able keys for result.json."""
        return {
            "guidance_mode": self.mode,
            "guide": self.guide,
            "guidance_weight": self.weight,
            "search_space": self.search_space,
            "guidance_labels": None if self.guidance_labels is None else self.guidance_labels.tolist(),
            "search_labels": None if self.search_labels is None else self.search_labels.tolist(),
            "candidate_losses": [c.to_dict() for c in self.candidates],
            "chosen_candidate": self.chosen if self.mode == "search" else None,
            "guidance_seconds": self.seconds,
        } | (self._halving_summary() if self.schedule != "exhaustive" else {})

    def _halving_summary(self) -> dict[str, Any]:
        full = max((c.iterations or 0) for c in self.candidates) if self.candidates else 0
        return {"search_schedule": self.schedule, "rungs": [r.to_dict() for r in self.rungs],
                "candidate_iterations": sum(c.iterations or 0 for c in self.candidates),
                "exhaustive_candidate_iterations": full * len(self.candidates)}


# ---- candidates --------------------------------------------------------------------------------


def class_evidence(obs: Observation) -> Tensor:
    """Per-class evidence that a class is in the batch, from the last layer's observed gradient:
    ``−∇b_c`` (``−s_c`` without a bias); higher is more likely (iDLG/LLG's sign argument)."""
    from ..labels.base import read_last_layer

    layer = read_last_layer(obs)
    scores = layer.grad_bias if layer.grad_bias is not None else layer.class_sums
    return -scores.float().cpu()  # candidates are planned on the CPU, whatever device the attack runs on


def _multisets(classes: Sequence[int], size: int) -> list[tuple[int, ...]]:
    return [tuple(sorted(c)) for c in itertools.combinations_with_replacement(sorted(classes), size)]


def enumerate_candidates(
    num_classes: int,
    batch_size: int,
    counts: Tensor | None = None,
    evidence: Tensor | None = None,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    seed: int = 0,
) -> Tensor:
    """Candidate labellings (K, B), each sorted; see the module docstring for the rules and bounds.

    ``counts`` (C,): recovered label counts (sum B) or None; ``evidence`` (C,): per-class plausibility
    (higher = more likely present), used to rank when the cap binds (None: class order).
    """
    if batch_size < 1 or num_classes < 1:
        raise ConfigError("the search needs at least one class and one image")
    if max_candidates < 1:
        raise ConfigError(f"max_candidates must be at least 1; got {max_candidates}")
    ev = torch.zeros(num_classes) if evidence is None else torch.as_tensor(evidence, dtype=torch.float32)
    ranked = [int(c) for c in torch.argsort(-ev, stable=True)]
    if batch_size == 1:
        return torch.tensor(sorted(ranked[:max_candidates])).unsqueeze(1)
    if counts is not None:
        counts = torch.as_tensor(counts, dtype=torch.long)
        if counts.shape != (num_classes,) or int(counts.sum()) != batch_size or int(counts.min()) < 0:
            raise ConfigError(f"label counts must be {num_classes} non-negative numbers summing to {batch_size}")
        base = sorted(torch.repeat_interleave(torch.arange(num_classes), counts).tolist())
        moves = []
        for a in sorted(set(base)):
            for b in range(num_classes):
                if b != a:
                    # Plausibility of replacing one a by b: evidence gained minus evidence lost.
                    moves.append((float(ev[b] - ev[a]), a, b))
        moves.sort(key=lambda m: -m[0])  # stable: ties keep class order
        found = [tuple(base)]
        for _, a, b in moves[: max_candidates - 1]:
            nxt = list(base)
            nxt.remove(a)
            found.append(tuple(sorted(nxt + [b])))
        return torch.tensor(found)
    m = num_classes
    while m > batch_size and math.comb(m + batch_size - 1, batch_size) > max_candidates:
        m -= 1
    sets = _multisets(ranked[:m], batch_size)
    if len(sets) > max_candidates:
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(sets), generator=gen)[:max_candidates].sort().values
        sets = [sets[int(i)] for i in keep]
    return torch.tensor(sets)


def align_to_slots(targets: Sequence[int], slot_labels: Sequence[int]) -> list[int]:
    """Place the classes ``targets`` on slots labelled ``slot_labels``: each slot whose label is among
    the targets gets it; the remaining targets fill the remaining slots in sorted order."""
    remaining = sorted(int(t) for t in targets)
    if len(remaining) != len(slot_labels):
        raise ConfigError(f"{len(remaining)} guidance classes for {len(slot_labels)} slots")
    out: list[int | None] = [None] * len(slot_labels)
    for i, label in enumerate(slot_labels):
        if int(label) in remaining:
            remaining.remove(int(label))
            out[i] = int(label)
    for i in range(len(out)):
        if out[i] is None:
            out[i] = remaining.pop(0)
    return [int(v) for v in out]


# ---- modes -------------------------------------------------------------------------------------


@dataclass
class SearchPlan:
    """What one mode asks the inversion to run: client-loss labels and guidance per candidate."""

    labels: Tensor  # (K, B)
    guidance: Tensor | None  # (K, B) or None (no guidance)


@dataclass
class ModeContext:
    obs: Observation
    attack_labels: Tensor | None  # sorted (B,), granted or recovered; None when unknown
    counts: Tensor | None
    batch_size: int
    true_labels: Tensor | None
    search_space: str
    max_candidates: int
    seed: int


GUIDANCE_MODES: Registry[Callable[[ModeContext], SearchPlan]] = Registry("guidance mode")


def _need_attack_labels(ctx: ModeContext, what: str) -> Tensor:
    if ctx.attack_labels is None:
        raise ConfigError(f"{what} needs the attack's labels (granted or recovered from the gradient)")
    return ctx.attack_labels


@GUIDANCE_MODES.register("none")
def _plan_none(ctx: ModeContext) -> SearchPlan:
    return SearchPlan(_need_attack_labels(ctx, "inversion").unsqueeze(0), None)


@GUIDANCE_MODES.register("oracle")
def _plan_oracle(ctx: ModeContext) -> SearchPlan:
    if ctx.true_labels is None:
        raise ConfigError("oracle guidance needs the true labels (an evaluator-side upper bound, not an attack)")
    labels = _need_attack_labels(ctx, "oracle guidance")
    guidance = torch.tensor(align_to_slots(ctx.true_labels.tolist(), labels.tolist()))
    return SearchPlan(labels.unsqueeze(0), guidance.unsqueeze(0))


@GUIDANCE_MODES.register("search")
def _plan_search(ctx: ModeContext) -> SearchPlan:
    evidence = class_evidence(ctx.obs)
    if ctx.search_space == "labels":
        cands = enumerate_candidates(ctx.obs.num_classes, ctx.batch_size, ctx.counts, evidence,
                                     ctx.max_candidates, ctx.seed)
        return SearchPlan(cands, cands.clone())
    labels = _need_attack_labels(ctx, "a search over guidance only")
    cands = enumerate_candidates(ctx.obs.num_classes, ctx.batch_size, ctx.counts, evidence,
                                 ctx.max_candidates, ctx.seed)
    guidance = torch.tensor([align_to_slots(c.tolist(), labels.tolist()) for c in cands])
    return SearchPlan(labels.unsqueeze(0).expand(len(cands), -1).clone(), guidance)


# ---- entry point -------------------------------------------------------------------------------


def _as_labels_and_counts(label_estimate: Any, num_classes: int) -> tuple[Tensor | None, Tensor | None]:
    if label_estimate is None:
        return None, None
    if isinstance(label_estimate, Tensor):
        labels = label_estimate.long().reshape(-1).sort().values
        return labels, torch.bincount(labels, minlength=num_classes)
    counts = torch.as_tensor(label_estimate.counts, dtype=torch.long)  # LabelEstimate
    return label_estimate.labels.long(), counts


def run_guided(
    obs: Observation,
    label_estimate: Any,
    inversion_config: InversionConfig,
    mode: str = "search",
    guide_name: str = "classifier",
    weight: float = 0.1,
    true_labels_for_oracle: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    clip_model: Any = None,
    aux_classifier: nn.Module | None = None,
    progress: bool = False,
    search_space: str = "labels",
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    selection: str = "matching",
    batched: bool = True,
    constrain_by_counts: bool = True,
    views: int = 1,
    guide_every: int = 1,
    clip_input_size: int | None = None,
    schedule: str | Sequence[Rung] = "exhaustive",
    eta: int = DEFAULT_ETA,
) -> GuidanceOutcome:
    """Guided reconstruction (``oracle``), label search by guidance (``search``) or none.

    ``label_estimate``: the attack's labels: a :class:`~gradleak.attacks.labels.LabelEstimate`, a
    tensor of granted labels, or None (unknown; only ``search`` over ``labels`` works then).
    ``true_labels_for_oracle``: the evaluator's ground truth, for ``oracle`` only. ``clip_model``: a
    :class:`~gradleak.semantic.ClipBackend` for the ``clip`` guide; ``aux_classifier``: a classifier
    trained on public data for the ``classifier`` guide. ``selection``: the final loss the search
    compares (``matching`` = L_grad, ``matching+prior`` = L_grad + λ_TV L_TV). ``batched=False`` (or
    L-BFGS) runs the candidates in a Python loop instead (same results, slower).
    ``constrain_by_counts=False`` enumerates B > 1 candidates without the recovered counts.
    ``views``: random views of each reconstruction the guide averages per step (1: the image itself;
    drawn from the inversion seed; :class:`~gradleak.attacks.inversion.guidance.ViewSampler`). ``guide_every``
    = k: the guide runs every k-th step at weight k·λ; ``clip_input_size``: CLIP's input side (clip guide).
    ``schedule``: ``exhaustive``, ``halving`` (successive halving at rate ``eta``, rungs by
    :func:`~.schedules.halving_rungs`) or explicit :class:`~.schedules.Rung` s; it needs the batched
    Adam engine. With one candidate (or no rung) halving is the exhaustive run.
    """
    started = time.perf_counter()
    plan_for = GUIDANCE_MODES.get(mode)
    if search_space not in SEARCH_SPACES:
        raise ConfigError(f"unknown search space {search_space!r}; choose {', '.join(SEARCH_SPACES)}")
    if selection not in SELECTIONS:
        raise ConfigError(f"unknown selection {selection!r}; choose {', '.join(SELECTIONS)}")
    if isinstance(schedule, str) and schedule not in SEARCH_SCHEDULES:
        raise ConfigError(f"unknown search schedule {schedule!r}; choose {', '.join(SEARCH_SCHEDULES)}")
    attack_labels, counts = _as_labels_and_counts(label_estimate, obs.num_classes)
    batch_size = int(attack_labels.numel()) if attack_labels is not None else obs.require_batch_size()
    if obs.batch_size is not None and batch_size != obs.batch_size:
        raise ConfigError(f"{batch_size} labels for a batch of {obs.batch_size}")
    true = None if true_labels_for_oracle is None else torch.as_tensor(true_labels_for_oracle).long().reshape(-1)
    ctx = ModeContext(obs, attack_labels, counts if constrain_by_counts else None, batch_size, true, search_space,
                      max_candidates, inversion_config.seed)
    plan = plan_for(ctx)

    if plan.guidance is None:
        recon = invert(obs, plan.labels[0], inversion_config, progress=progress)
        return GuidanceOutcome(mode, None, 0.0, None, plan.labels[0], None, recon,
                               seconds=time.perf_counter() - started)

    if not float(weight) >= 0:
        raise ConfigError(f"--guidance-weight must be a non-negative number; got {weight}")
    names = class_names if class_names is not None else obs.class_names
    guide = build_guide(guide_name, clip=clip_model, class_names=names, aux_classifier=aux_classifier, views=views,
                        num_classes=obs.num_classes, seed=inversion_config.seed, input_size=clip_input_size)
    guidance = Guidance(guide, weight, every=guide_every)
    engine = invert_batched if batched and inversion_config.optimizer == "adam" else invert_sequential
    rungs = (halving_rungs(len(plan.labels), inversion_config.iterations, eta) if schedule == "halving"
             else [] if schedule == "exhaustive" else list(schedule))
    records: list[RungRecord] = []
    if rungs and engine is not invert_batched:
        raise ConfigError("successive halving needs the batched engine with the adam optimiser")
    if rungs:
        result, records = invert_halving(obs, plan.labels, inversion_config, rungs, guidance, plan.guidance,
                                         with_prior=selection == "matching+prior", progress=progress)
    else:
        result = engine(obs, plan.labels, inversion_config, guidance, plan.guidance, progress=progress)

    candidates = []
    for k, rec in enumerate(result.reconstructions):
        prior = result.prior_losses[k]
        score = rec.matching_loss + (prior if selection == "matching+prior" else 0.0)
        candidates.append(CandidateLoss(
            labels=plan.labels[k].tolist(), guidance=plan.guidance[k].tolist(), matching_loss=rec.matching_loss,
            prior_loss=prior, guidance_loss=None if result.guidance_losses is None else result.guidance_losses[k],
            score=score,
        ))
    if records:
        for k, cand in enumerate(candidates):
            cand.rung_losses = [r.matching[k] for r in records if k in r.matching]
            cand.dropped_at_rung = next((i for i, r in enumerate(records) if k in r.compared and k not in r.kept), None)
            cand.iterations = result.reconstructions[k].iterations
    finalists = [k for k, c in enumerate(candidates) if c.dropped_at_rung is None]
    chosen = min(finalists, key=lambda k: candidates[k].score)
    return GuidanceOutcome(
        mode=mode, guide=guide_name, weight=float(weight), search_space=search_space if mode == "search" else None,
        labels=plan.labels[chosen].clone(), guidance_labels=plan.guidance[chosen].clone(),
        reconstruction=result.reconstructions[chosen], candidates=candidates,
        chosen=chosen, seconds=time.perf_counter() - started,
        schedule="exhaustive" if not records else schedule if isinstance(schedule, str) else "custom", rungs=records,
    )
