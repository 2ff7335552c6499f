"""Semantic label reconstruction: name what reconstructed images show (Malcewicz et al. 2025).

Labellers (CLIP zero-shot, an auxiliary classifier trained on public data, or none) give each
reconstruction a distribution over class names; gradient label counts constrain the final
assignment; evidence is aggregated over restarts and rounds, and the unknown output-index →
class-name map is recovered from it. ``transformers`` is imported only when CLIP is loaded.

The vision models themselves (CLIP, the auxiliary classifier, prompts) live in :mod:`gradleak.vision`,
below both this stage and the attacks.
"""

from .aggregation import (
    LabelMapEvidence,
    aggregate_counts,
    align_rounds,
    aggregate_probabilities,
    class_mass,
    counts_from_mass,
    counts_to_labels,
    label_map_accuracy,
    solve_label_map,
)
from .assignment import assignment_log_prob, brute_force_constrained_assignment, constrained_assignment
from .labellers import (
    LABELLERS,
    ClassifierLabeller,
    ClipLabeller,
    Labeller,
    SemanticLabels,
    UniformLabeller,
    build_labeller,
    label_images,
    semantic_accuracy,
)

__all__ = [
    "LABELLERS",
    "ClassifierLabeller",
    "ClipLabeller",
    "LabelMapEvidence",
    "Labeller",
    "SemanticLabels",
    "UniformLabeller",
    "aggregate_counts",
    "align_rounds",
    "aggregate_probabilities",
    "assignment_log_prob",
    "brute_force_constrained_assignment",
    "build_labeller",
    "class_mass",
    "constrained_assignment",
    "counts_from_mass",
    "counts_to_labels",
    "label_images",
    "label_map_accuracy",
    "semantic_accuracy",
    "solve_label_map",
]
