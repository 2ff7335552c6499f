"""The attacker's side vision models: CLIP, an auxiliary classifier trained on public data, prompts.

Shared by the attack stage (semantic guidance of gradient inversion, :mod:`gradleak.attacks.inversion`)
and the labelling stage (:mod:`gradleak.semantic`); it sits below both and imports neither.
``transformers`` is imported only when CLIP is loaded.
"""

from .cache import CardedClassifier, ClassifierCard, cached_classifier, load_classifier, save_classifier
from .classifier import (
    AUX_ARCHS,
    SmallCNN,
    classifier_accuracy,
    pgd_l2,
    robust_accuracy,
    train_aux_classifier,
    train_public_classifier,
)
from .clip import DEFAULT_CLIP_MODEL, ClipBackend, ClipUnavailableError, load_clip
from .prompts import (
    CIFAR_ENSEMBLE,
    DEFAULT_TEMPLATE,
    GUIDANCE_TEMPLATE,
    TEMPLATE_SETS,
    check_class_names,
    check_templates,
    fill,
    load_class_names,
    load_prompts,
    resolve_templates,
)

__all__ = [
    "AUX_ARCHS",
    "CIFAR_ENSEMBLE",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_TEMPLATE",
    "GUIDANCE_TEMPLATE",
    "TEMPLATE_SETS",
    "CardedClassifier",
    "ClassifierCard",
    "ClipBackend",
    "ClipUnavailableError",
    "SmallCNN",
    "cached_classifier",
    "check_class_names",
    "check_templates",
    "classifier_accuracy",
    "fill",
    "load_class_names",
    "load_classifier",
    "load_clip",
    "load_prompts",
    "pgd_l2",
    "resolve_templates",
    "robust_accuracy",
    "save_classifier",
    "train_aux_classifier",
    "train_public_classifier",
]
