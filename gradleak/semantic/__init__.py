"""Semantic label reconstruction: name what reconstructed images show (Malcewicz et al. 2025).

Labellers (CLIP zero-shot, an auxiliary classifier trained on public data, or none) give each
reconstruction a distribution over class names; gradient label counts constrain the final
assignment; evidence is aggregated over restarts and rounds, and the unknown output-index →
class-name map is recovered from it. ``transformers`` is imported only when CLIP is loaded.
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
from .classifier import SmallCNN, classifier_accuracy, train_aux_classifier
from .clip import DEFAULT_CLIP_MODEL, ClipBackend, ClipUnavailableError, load_clip
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
from .prompts import (
    CIFAR_ENSEMBLE,
    DEFAULT_TEMPLATE,
    GUIDANCE_TEMPLATE,
    TEMPLATE_SETS,
    load_class_names,
    load_prompts,
    resolve_templates,
)

__all__ = [
    "CIFAR_ENSEMBLE",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_TEMPLATE",
    "GUIDANCE_TEMPLATE",
    "LABELLERS",
    "TEMPLATE_SETS",
    "ClassifierLabeller",
    "ClipBackend",
    "ClipLabeller",
    "ClipUnavailableError",
    "LabelMapEvidence",
    "Labeller",
    "SemanticLabels",
    "SmallCNN",
    "UniformLabeller",
    "aggregate_counts",
    "align_rounds",
    "aggregate_probabilities",
    "assignment_log_prob",
    "brute_force_constrained_assignment",
    "build_labeller",
    "class_mass",
    "classifier_accuracy",
    "constrained_assignment",
    "counts_from_mass",
    "counts_to_labels",
    "label_images",
    "label_map_accuracy",
    "load_class_names",
    "load_clip",
    "load_prompts",
    "resolve_templates",
    "semantic_accuracy",
    "train_aux_classifier",
]
