"""Combine label evidence across restarts, rounds and clients' repeated participation.

The seed (Malcewicz et al. 2025) reports that aggregating label evidence improves label recovery.
Three places evidence repeats:

* restarts of one reconstruction — the same N images, rows aligned: :func:`aggregate_probabilities`;
* rounds in which the same client data is observed again — rows NOT aligned (each round
  reconstructs in its own order), so evidence is pooled per class (:func:`aggregate_counts`),
  or the rounds are first aligned by image similarity (:func:`align_rounds`);
* the model's output-index → class-name map, unknown to an attacker who only sees a gradient:
  each round pairs a recovered output index with a labeller's distribution over names;
  :class:`LabelMapEvidence` accumulates these and :func:`solve_label_map` reads off the
  most likely one-to-one map (Hungarian method).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry

_EPS = 1e-12


def _stack_tables(tables: Sequence[Tensor]) -> Tensor:
    if len(tables) == 0:
        raise ConfigError("no probability tables to aggregate")
    shapes = {tuple(t.shape) for t in tables}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ConfigError(f"probability tables must all be (N, C) of one shape; got {sorted(shapes)}")
    stacked = torch.stack([torch.as_tensor(t).detach().double().cpu() for t in tables])
    if not torch.isfinite(stacked).all() or (stacked < 0).any():
        raise ConfigError("probability tables must be finite and non-negative")
    return stacked / stacked.sum(dim=-1, keepdim=True).clamp_min(_EPS)


def _mean_log(stacked: Tensor) -> Tensor:
    # Product of experts: each restart is an independent look at the same image.
    return stacked.clamp_min(_EPS).log().mean(dim=0).softmax(dim=-1)


def _mean(stacked: Tensor) -> Tensor:
    return stacked.mean(dim=0)


PROBABILITY_AGGREGATORS: Registry[Callable[[Tensor], Tensor]] = Registry("probability aggregation")
PROBABILITY_AGGREGATORS.add("mean_log", _mean_log)
PROBABILITY_AGGREGATORS.add("mean", _mean)


def aggregate_probabilities(tables: Sequence[Tensor], method: str = "mean_log") -> Tensor:
    """Combine R aligned (N, C) tables: ``mean_log`` (renormalised geometric mean) or ``mean``."""
    return PROBABILITY_AGGREGATORS.get(method)(_stack_tables(tables)).float()


def _round_mass_soft(table: Tensor) -> Tensor:
    return (table / table.sum(dim=-1, keepdim=True).clamp_min(_EPS)).sum(dim=0)


def _round_mass_hard(table: Tensor) -> Tensor:
    # Top-1 votes: ignores how uncalibrated probabilities spread over wrong classes.
    return torch.bincount(table.argmax(dim=-1), minlength=table.shape[-1]).double()


ROUND_MASS: Registry[Callable[[Tensor], Tensor]] = Registry("round aggregation")
ROUND_MASS.add("soft", _round_mass_soft)
ROUND_MASS.add("hard", _round_mass_hard)


def class_mass(per_round: Sequence[Tensor], method: str = "soft") -> Tensor:
    """Expected count of each class per round, averaged over rounds: mean_r Σ_i p_r[i, c].

    An entry may be an (N_r, C) probability table (reconstructions of round r, any order) or a
    (C,) count vector (e.g. from gradient label recovery); both are per-class expected counts.
    ``method="hard"`` counts top-1 votes of a table instead of summing its probabilities.
    """
    if len(per_round) == 0:
        raise ConfigError("no rounds to aggregate")
    reduce = ROUND_MASS.get(method)
    masses = []
    for r, item in enumerate(per_round):
        t = torch.as_tensor(item).detach().double().cpu()
        if not torch.isfinite(t).all() or (t < 0).any() or t.dim() not in (1, 2):
            raise ConfigError(f"round {r}: expected an (N, C) probability table or a (C,) count vector")
        masses.append(reduce(t) if t.dim() == 2 else t)
    if len({m.shape[0] for m in masses}) != 1:
        raise ConfigError("rounds disagree on the number of classes")
    return torch.stack(masses).mean(dim=0)


def counts_from_mass(mass: Tensor, batch_size: int, distinct: bool = False) -> list[int]:
    """Integer counts summing to ``batch_size`` from per-class mass.

    ``distinct``: the ``batch_size`` classes of largest mass, once each (labels known to be
    unique). Otherwise largest-remainder rounding of the mass rescaled to ``batch_size``.
    """
    m = torch.as_tensor(mass).detach().double().cpu()
    if m.dim() != 1 or (m < 0).any() or not torch.isfinite(m).all():
        raise ConfigError("class mass must be a finite non-negative vector")
    if batch_size < 1:
        raise ConfigError(f"batch size must be ≥ 1; got {batch_size}")
    counts = torch.zeros(m.shape[0], dtype=torch.long)
    if distinct:
        if batch_size > m.shape[0]:
            raise ConfigError(f"{batch_size} distinct labels cannot come from {m.shape[0]} classes")
        # stable sort: ties go to the lower class index, deterministically
        order = torch.sort(-m, stable=True).indices
        counts[order[:batch_size]] = 1
        return counts.tolist()
    total = m.sum()
    scaled = m * batch_size / total if total > 0 else torch.full_like(m, batch_size / m.shape[0])
    counts = scaled.floor().long()
    remainder = batch_size - int(counts.sum())
    order = torch.sort(-(scaled - counts), stable=True).indices
    counts[order[:remainder]] += 1
    return counts.tolist()


def aggregate_counts(
    per_round: Sequence[Tensor], batch_size: int | None = None, distinct: bool = False, method: str = "hard"
) -> list[int]:
    """Class multiset of a client's batch from R rounds of evidence (see :func:`class_mass`).

    ``batch_size`` defaults to the rows of the first probability table. Pooling per class needs
    no correspondence between rounds; see :func:`align_rounds` for per-image aggregation.
    Default ``hard``: on noisy digits (σ = 0.3, 5 rounds, batches of 8) top-1 votes gave 0.86
    order-free accuracy against 0.81 for summed probabilities and 0.81 for one round.
    """
    if batch_size is None:
        first = torch.as_tensor(per_round[0]) if len(per_round) else None
        if first is None or first.dim() != 2:
            raise ConfigError("give batch_size when rounds are count vectors")
        batch_size = int(first.shape[0])
    return counts_from_mass(class_mass(per_round, method), batch_size, distinct=distinct)


def align_rounds(images: Sequence[Tensor], tables: Sequence[Tensor]) -> list[Tensor]:
    """Reorder each round's table rows to follow round 0's reconstructions.

    Round r's reconstructions of the same client images come in their own order; pair them with
    round 0's by the Hungarian method on pixel distance, so that the aligned tables can be
    combined per image with :func:`aggregate_probabilities`.
    """
    if len(images) != len(tables) or len(images) == 0:
        raise ConfigError(f"{len(images)} image batches for {len(tables)} probability tables")
    ref = images[0].detach().flatten(1).double().cpu()
    aligned = []
    for r, (x, table) in enumerate(zip(images, tables)):
        x = x.detach().flatten(1).double().cpu()
        if x.shape != ref.shape or table.shape[0] != x.shape[0]:
            raise ConfigError(f"round {r}: images {tuple(x.shape)} / table {tuple(table.shape)} do not match round 0")
        _, cols = linear_sum_assignment(torch.cdist(ref, x).numpy())
        aligned.append(table[torch.as_tensor(cols)])
    return aligned


def counts_to_labels(counts: Sequence[int]) -> list[int]:
    """The sorted label multiset with the given per-class counts."""
    return [c for c, k in enumerate(counts) for _ in range(int(k))]


@dataclass
class LabelMapEvidence:
    """Evidence about which class name each model output index stands for, accumulated over rounds.

    ``log_prob[i, n]`` sums log p(name n | reconstruction labelled with index i) over observations
    (the log-likelihood of "index i means name n" under independent rounds); ``votes[i, n]``
    counts top-1 agreements, a more outlier-robust score.
    """

    num_indices: int
    num_names: int
    log_prob: Tensor = field(init=False)
    votes: Tensor = field(init=False)
    observations: Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.num_indices < 1 or self.num_names < self.num_indices:
            raise ConfigError(
                f"a one-to-one label map needs at least as many names ({self.num_names}) "
                f"as output indices ({self.num_indices})"
            )
        self.log_prob = torch.zeros(self.num_indices, self.num_names, dtype=torch.float64)
        self.votes = torch.zeros(self.num_indices, self.num_names, dtype=torch.float64)
        self.observations = torch.zeros(self.num_indices, dtype=torch.long)

    def add(self, index: int, probabilities: Tensor) -> None:
        """One observation: a reconstruction attributed to output ``index`` and its name distribution."""
        p = torch.as_tensor(probabilities).detach().double().cpu().reshape(-1)
        if not 0 <= int(index) < self.num_indices:
            raise ConfigError(f"output index {index} outside 0..{self.num_indices - 1}")
        if p.shape[0] != self.num_names or not torch.isfinite(p).all() or (p < 0).any():
            raise ConfigError(f"expected {self.num_names} finite non-negative name probabilities")
        p = p / p.sum().clamp_min(_EPS)
        self.log_prob[index] += p.clamp_min(_EPS).log()
        self.votes[index, int(p.argmax())] += 1
        self.observations[index] += 1

    def add_round(self, indices: Sequence[int] | Tensor, probabilities: Tensor) -> None:
        """A round's pairs: ``indices[j]`` recovered from the gradient, ``probabilities[j]`` its labeller row."""
        idx = torch.as_tensor(indices).reshape(-1).tolist()
        probs = torch.as_tensor(probabilities)
        if probs.dim() != 2 or probs.shape[0] != len(idx):
            raise ConfigError(f"{len(idx)} indices but a probability table of shape {tuple(probs.shape)}")
        for i, row in zip(idx, probs):
            self.add(int(i), row)

    def merge(self, other: "LabelMapEvidence") -> "LabelMapEvidence":
        """Evidence of both (e.g. from several clients sharing one label space)."""
        if (other.num_indices, other.num_names) != (self.num_indices, self.num_names):
            raise ConfigError("cannot merge label-map evidence of different sizes")
        out = LabelMapEvidence(self.num_indices, self.num_names)
        out.log_prob = self.log_prob + other.log_prob
        out.votes = self.votes + other.votes
        out.observations = self.observations + other.observations
        return out


LABEL_MAP_SCORES: Registry[Callable[[LabelMapEvidence], Tensor]] = Registry("label-map score")
LABEL_MAP_SCORES.add("log_prob", lambda e: e.log_prob)
LABEL_MAP_SCORES.add("votes", lambda e: e.votes)


def solve_label_map(evidence: LabelMapEvidence, score: str = "log_prob") -> list[int]:
    """The one-to-one map (output index → name index) of highest total score, by the Hungarian method.

    Indices never observed take whatever names the observed ones leave (by elimination when
    only one is left; arbitrary otherwise).
    """
    matrix = LABEL_MAP_SCORES.get(score)(evidence).numpy()
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    mapping = np.empty(evidence.num_indices, dtype=np.int64)
    mapping[rows] = cols
    return mapping.tolist()


def label_map_accuracy(mapping: Sequence[int], true_map: Sequence[int]) -> float:
    """Fraction of output indices mapped to their true name."""
    if len(mapping) != len(true_map) or len(mapping) == 0:
        raise ConfigError(f"label maps differ in length ({len(mapping)} vs {len(true_map)}) or are empty")
    return float(np.mean(np.asarray(mapping) == np.asarray(true_map)))
