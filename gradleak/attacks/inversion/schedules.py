"""Search schedules for the label search: exhaustive, or successive halving (racing).

``exhaustive`` runs every candidate for the full inversion budget T (:func:`~.batched.invert_batched`).
``halving`` is successive halving (Jamieson & Talwalkar 2016, "Non-stochastic best arm
identification and hyperparameter optimization"; the inner loop of Hyperband, Li et al. 2018): all
K candidates run to the first rung, the best ``⌈n/η⌉`` of the n compared survive, the survivors
CONTINUE from where they are (pixels, Adam moments, step count and the lr schedule of the full
budget: :class:`~.batched.BatchedRun`) to the next rung, and so on; the last survivors run to T,
exactly the budget every candidate gets exhaustively, and the final pick among them is the
exhaustive rule (lowest final score).

Rung rule (:func:`halving_rungs`), η = 3 by default: s = the fewest reductions that leave at most η
candidates (``⌈K/η^s⌉ ≤ η``), rungs at ``T/η^s, …, T/η`` (geometric, as in SH/Hyperband) keeping
``⌈K/η⌉, …, ⌈K/η^s⌉``. For K = 10: rungs at T/9 and T/3, 10 → 4 → 2, and 2 run to T: 3.3·T
candidate-iterations instead of 10·T. K = 19 (B = 2 with counts): 19 → 7 → 3, 5.7·T instead of 19·T.
K ≤ η: no rung (exhaustive). Why η = 3 and not 2: for K = 10, η = 2 gives 10 → 5 → 3 → 2 at T/8,
T/4, T/2, ≈ 3.6·T of work, no less than η = 3's 3.3·T, with three comparisons instead of two (each
one a chance to drop the best candidate); η = 3 makes its first comparison at T/9 (22 of 200
iterations) and leaves up to η candidates to the full budget, so a close call between the few best
is decided as the exhaustive search decides it. Rungs that round to fewer than one iteration are skipped.

Ranking: by the score the final selection uses (fp32 ``L_grad`` of the candidate's best restart,
plus its prior for ``selection="matching+prior"``), never by the guidance loss and never by anything
the evaluator holds; ties keep the lower candidate index; a diverged (non-finite) candidate ranks last.

What halving can miss: a candidate that is worse at a rung and best at T — a "late bloomer". With
IG's schedule the lr decays ×0.1 at 3T/8, 5T/8 and 7T/8, so both default rungs (T/9, T/3) compare
candidates in the high-lr phase, where signed Adam's losses oscillate; a candidate whose loss
drops only after a decay, or whose lead at T is smaller than the early noise, can be dropped. Label
search over ``labels`` separates quickly (a wrong label cannot match the last layer's gradient);
over ``guidance`` the candidates differ only through the guide's pull, and early gaps are smaller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from ...errors import ConfigError
from ...threat import Observation
from .batched import BatchedInversion, BatchedRun
from .guidance import Guidance
from .invert import InversionConfig

SEARCH_SCHEDULES = ("exhaustive", "halving")
DEFAULT_ETA = 3


@dataclass(frozen=True)
class Rung:
    """A comparison after ``iterations`` (cumulative) iterations; the best ``keep`` continue."""

    iterations: int
    keep: int


@dataclass
class RungRecord:
    """What one rung saw: the candidates compared, their scores and matching losses, who survived."""

    iterations: int
    compared: list[int]
    kept: list[int]
    matching: dict[int, float]  # candidate id -> fp32 L_grad of its best restart at this rung
    scores: dict[int, float]  # what was ranked

    def to_dict(self) -> dict:
        return {"iterations": self.iterations, "compared": len(self.compared), "kept": len(self.kept)}


def halving_rungs(num_candidates: int, iterations: int, eta: int = DEFAULT_ETA) -> list[Rung]:
    """The rungs of successive halving before the full budget (see the module docstring)."""
    if isinstance(eta, bool) or not isinstance(eta, int) or eta < 2:
        raise ConfigError(f"the halving rate eta must be an integer of at least 2; got {eta!r}")
    if num_candidates < 1 or iterations < 1:
        raise ConfigError("halving needs at least one candidate and one iteration")
    s = 0
    while math.ceil(num_candidates / eta ** s) > eta:
        s += 1
    rungs: list[Rung] = []
    for i in range(1, s + 1):
        at = iterations // eta ** (s - i + 1)
        keep = math.ceil(num_candidates / eta ** i)
        if at < 1:
            continue
        if rungs and rungs[-1].iterations == at:
            rungs[-1] = Rung(at, keep)  # two rungs at one iteration: the later, smaller keep
        else:
            rungs.append(Rung(at, keep))
    return rungs


def check_rungs(rungs: Sequence[Rung], num_candidates: int, iterations: int) -> list[Rung]:
    """Validated rungs: iterations strictly increasing within [1, iterations), keep within [1, alive]."""
    out, last_it, alive = [], 0, num_candidates
    for rung in rungs:
        rung = Rung(int(rung.iterations), int(rung.keep))
        if not last_it < rung.iterations < iterations:
            raise ConfigError(f"rung iterations must increase strictly within [1, {iterations}); got {rung.iterations}")
        if not 1 <= rung.keep <= alive:
            raise ConfigError(f"a rung must keep between 1 and the {alive} candidates alive; got {rung.keep}")
        out.append(rung)
        last_it, alive = rung.iterations, rung.keep
    return out


def _ranking_scores(matching: Tensor, prior: Tensor, with_prior: bool) -> tuple[list[float], list[float]]:
    """Per alive candidate: (matching loss of its best restart, score ranked)."""
    best = torch.argmin(matching, dim=1)  # first minimum, as the final choice of restart
    rows = torch.arange(matching.shape[0], device=matching.device)
    m = matching[rows, best]
    score = m + prior[rows, best] if with_prior else m
    score = torch.where(torch.isfinite(score), score, torch.full_like(score, float("inf")))
    return [float(v) for v in m], [float(v) for v in score]


def survivors(alive: Sequence[int], ranked: Sequence[float], keep: int) -> list[int]:
    """The ``keep`` best of the ``alive`` candidate ids by ``ranked`` (lower wins, ties keep the lower id), in id order."""
    order = sorted(range(len(alive)), key=lambda q: (ranked[q], alive[q]))
    return sorted(alive[q] for q in order[:keep])


def replay_halving(rung_scores: Sequence[Mapping[int, float]], final_scores: Sequence[float],
                   rungs: Sequence[Rung]) -> tuple[int, list[list[int]]]:
    """The candidate successive halving over ``rungs`` picks, replayed on an exhaustive run.

    The exhaustive run must have scored every candidate at each rung's iteration: run it with the
    same rungs keeping all (``[Rung(r.iterations, K) for r in rungs]``; the scoring does not change
    the trajectories) and pass each ``RungRecord.scores`` and the final scores. Survivors continue
    from where they stand, so the replay is the live race up to floating-point differences that a
    smaller batch may introduce after the first rung. Returns (chosen id, survivors after each rung).
    """
    alive = list(range(len(final_scores)))
    kept_after: list[list[int]] = []
    if len(rung_scores) != len(rungs):
        raise ConfigError(f"{len(rung_scores)} rungs scored for {len(rungs)} rungs to replay")
    for scores, rung in zip(rung_scores, rungs):
        if any(k not in scores for k in alive):
            raise ConfigError("replay needs every candidate scored at every rung (an exhaustive run keeping all)")
        alive = survivors(alive, [scores[k] for k in alive], rung.keep)
        kept_after.append(alive)
    return min(alive, key=lambda k: final_scores[k]), kept_after


def invert_halving(
    observation: Observation,
    labels: Tensor,
    config: InversionConfig,
    rungs: Sequence[Rung],
    guidance: Guidance | None = None,
    guidance_targets: Tensor | None = None,
    with_prior: bool = False,
    inits: Tensor | None = None,
    progress: bool = False,
) -> tuple[BatchedInversion, list[RungRecord]]:
    """:func:`~.batched.invert_batched` raced by successive halving over ``rungs``.

    Every candidate gets a reconstruction: a dropped one as it stood at its rung (its
    ``Reconstruction.iterations`` says how far it ran), a survivor after the full budget.
    ``with_prior``: rank by ``L_grad`` + prior (``selection="matching+prior"``) instead of ``L_grad``.
    """
    run = BatchedRun(observation, labels, config, guidance, guidance_targets, inits, progress)
    rungs = check_rungs(rungs, run.labels.shape[0], config.iterations)
    records: list[RungRecord] = []
    try:
        for rung in rungs:
            run.advance(rung.iterations)
            scores = run.scores(with_guidance=False)
            matching, ranked = _ranking_scores(scores[0], scores[1], with_prior)
            kept = survivors(run.alive, ranked, rung.keep)
            records.append(RungRecord(rung.iterations, list(run.alive), kept,
                                      dict(zip(run.alive, matching)), dict(zip(run.alive, ranked))))
            run.drop([c for c in run.alive if c not in kept], scores)
        run.advance(config.iterations)
        return run.finish(), records
    finally:
        run.close()
