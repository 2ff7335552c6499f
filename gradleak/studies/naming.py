"""The attacker names what it reconstructed (Malcewicz et al. 2025): the labeller's verdict per
reconstruction, and the output-index → class-name map pooled over every batch it observed.

The gradient gives each reconstruction an output *index*; which class *name* an index stands for
is not in the update. Per reconstruction the labeller (CLIP or the auxiliary classifier) gives a
distribution over names. Over R observed batches of one client the attacker pools that evidence
per recovered index and solves the one-to-one index → name map (Hungarian method on summed
log-probabilities), then names every image by its index. The map can only improve with R, while a
single reconstruction's top-1 name cannot: this is the aggregation the seed means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError

# Numbers of batches at which the pooled map is also reported (the seed's aggregation curve): the
# first R batches of a longer run are exactly a run with R batches, so one run gives the whole curve.
PREFIXES = (1, 2, 5, 10, 20)


@dataclass
class Naming:
    """What the attacker concluded about names, for the first observed batch and overall."""

    tables: list[torch.Tensor]  # per batch: (B, names) labeller probabilities of its reconstructions
    indices: list[list[int]]  # per batch: the output index of each reconstruction (from the gradient)
    class_names: list[str]
    label_map: list[int] | None = None  # output index → name index, pooled over all batches
    indices_seen: list[int] = field(default_factory=list)
    # R → (label map, indices seen) from the first R batches only, for R in PREFIXES below the total
    prefix_maps: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)

    @property
    def top1(self) -> list[int]:
        """Batch 0's names by the labeller alone, reconstruction by reconstruction."""
        return [int(i) for i in self.tables[0].argmax(dim=1)]

    @property
    def by_label_map(self) -> list[int] | None:
        """Batch 0's names through the pooled label map (None when the map cannot be solved)."""
        if self.label_map is None:
            return None
        return [self.label_map[i] for i in self.indices[0]]


def labeller_table(side, reconstruction) -> torch.Tensor:
    """The labeller's name probabilities for a reconstruction's images; with restarts, pooled over
    the restarts aligned to the kept one (mean of log-probabilities)."""
    from ..semantic import aggregate_probabilities, align_rounds

    labeller, names = side.labeller, side.class_names
    restarts = reconstruction.restart_images
    if len(restarts) <= 1:
        return labeller.probabilities(reconstruction.images, names)
    tables = [labeller.probabilities(img, names) for img in restarts]
    best = next((i for i, r in enumerate(restarts) if r is reconstruction.images), 0)
    order = [best] + [i for i in range(len(restarts)) if i != best]
    return aggregate_probabilities(align_rounds([restarts[i] for i in order], [tables[i] for i in order]))


def name_batches(side, outcomes, num_outputs: int) -> Naming:
    """Name the reconstructions of every observed batch and pool them into a label map."""
    from ..semantic import LabelMapEvidence, solve_label_map

    if not outcomes:
        raise ConfigError("no observed batch to name")
    names = side.class_names
    tables = [labeller_table(side, o.reconstruction) for o in outcomes]
    indices = [[int(i) for i in o.labels] for o in outcomes]
    naming = Naming(tables, indices, list(names))
    if len(names) >= num_outputs:  # a one-to-one map needs a name for every index
        evidence = LabelMapEvidence(num_outputs, len(names))
        for r, (idx, table) in enumerate(zip(indices, tables), start=1):
            evidence.add_round(idx, table)
            seen = sorted(int(i) for i in evidence.observations.nonzero().flatten())
            if r in PREFIXES or r == len(outcomes):
                naming.prefix_maps[r] = (solve_label_map(evidence), seen)
        naming.label_map, naming.indices_seen = naming.prefix_maps[len(outcomes)]
    return naming
