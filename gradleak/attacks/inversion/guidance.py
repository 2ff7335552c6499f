"""Semantic guidance of gradient inversion (Malcewicz, Stępka, Turner, Dubrawski 2025).

``L_total = L_grad + λ_TV L_TV + λ_guide L_guide``: a guide scores how well each reconstructed
image shows its guidance class. Two guides, one registry (:data:`GUIDES`):

- ``clip``: ``L_CLIP(x̂_i, c_i) = 1 − cos(E_img(x̂_i), E_txt("image of a {c_i}"))`` through a
  differentiable resize to CLIP's input and CLIP's normalisation (docs/ALGORITHMS.md, "CLIP terms").
- ``classifier``: ``CE(aux(x̂_i), c_i)`` of an auxiliary classifier the attacker trained on PUBLIC
  data (:func:`gradleak.vision.train_public_classifier`): the offline stand-in for CLIP (no weights
  to download).

A guide returns one loss per image so that the batched search (``batched.py``) can reduce it per
candidate; :class:`GuidanceRegularizer` wraps a guide with fixed targets as a regulariser of the
ordinary (sequential) inversion and is registered as ``"guidance"`` in
:data:`~gradleak.attacks.inversion.regularizers.REGULARIZERS`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...registry import Registry
from ...threat import Observation
from ...vision.prompts import GUIDANCE_TEMPLATE  # "image of a {c}", the seed's guidance prompt
from .regularizers import REGULARIZERS


class Guide(Protocol):
    """Scores images against guidance classes; differentiable in the images."""

    name: str

    def per_image(self, x: Tensor, targets: Tensor) -> Tensor:
        """``x`` (N, C, H, W) in [0, 1], ``targets`` (N,) class indices → loss per image (N,)."""
        ...


GUIDES: Registry[Callable[..., Guide]] = Registry("guide")


def _check_targets(x: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    targets = torch.as_tensor(targets, dtype=torch.long, device=x.device).reshape(-1)
    if targets.shape[0] != x.shape[0]:
        raise ConfigError(f"{targets.shape[0]} guidance classes for {x.shape[0]} images")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ConfigError(f"guidance classes must lie in [0, {num_classes - 1}]")
    return targets


@GUIDES.register("clip")
class ClipGuide:
    """CLIP guidance (Malcewicz et al. 2025; CLIP: Radford et al. 2021).

    Text embeddings of ``template`` filled with each class name are computed once; per step only
    the image tower runs (frozen; gradients flow to the pixels only).
    """

    name = "clip"

    def __init__(self, clip: Any = None, class_names: Sequence[str] | None = None,
                 template: str = GUIDANCE_TEMPLATE, **_: Any):
        if clip is None:
            raise ConfigError("the clip guide needs a CLIP model (pass --clip-model DIR, or use --guide classifier offline)")
        if not class_names:
            raise ConfigError("the clip guide needs the class names (the threat model must grant them)")
        self.clip = clip
        self.class_names = list(class_names)
        self.template = template
        with torch.no_grad():
            self.text = clip.class_text_embeddings(self.class_names, template).float()  # (C, D), unit norm

    def per_image(self, x: Tensor, targets: Tensor) -> Tensor:
        targets = _check_targets(x, targets, len(self.class_names))
        return self.clip.guidance_loss(x, self.text[targets.to(self.text.device)], reduction="none").to(x.device)


@GUIDES.register("classifier")
class ClassifierGuide:
    """Cross-entropy of the attacker's auxiliary classifier (trained on public data, taking [0, 1]
    pixels) toward each image's guidance class; frozen, in eval mode."""

    name = "classifier"

    def __init__(self, aux_classifier: nn.Module | None = None, num_classes: int | None = None, **_: Any):
        if aux_classifier is None:
            raise ConfigError("the classifier guide needs an auxiliary classifier trained on public data")
        self.model = copy.deepcopy(aux_classifier).eval().requires_grad_(False)
        self.num_classes = num_classes

    def per_image(self, x: Tensor, targets: Tensor) -> Tensor:
        logits = self.model(x)
        targets = _check_targets(x, targets, self.num_classes or logits.shape[-1])
        return F.cross_entropy(logits.float(), targets, reduction="none")


def build_guide(name: str, **kwargs: Any) -> Guide:
    """A guide by name: ``clip`` (clip=ClipBackend, class_names=, template=) or ``classifier``
    (aux_classifier=, num_classes=)."""
    return GUIDES.get(name)(**kwargs)


@dataclass
class Guidance:
    """A guide and its weight λ in ``L_total``."""

    guide: Guide
    weight: float

    def __post_init__(self) -> None:
        if not float(self.weight) >= 0:
            raise ConfigError(f"guidance weight must be a non-negative number; got {self.weight}")
        self.weight = float(self.weight)

    def per_candidate(self, x: Tensor, targets: Tensor) -> Tensor:
        """Unweighted mean guidance loss of each candidate: ``x`` (K, B, C, H, W), ``targets`` (K, B) → (K,)."""
        k, b = x.shape[:2]
        return self.guide.per_image(x.reshape(k * b, *x.shape[2:]), targets.reshape(-1)).view(k, b).mean(dim=1)


@REGULARIZERS.register("guidance")
class GuidanceRegularizer:
    """``mean_i L_guide(x̂_i, c_i)`` for fixed guidance classes ``targets`` (B,): the guidance term as
    a regulariser of the ordinary inversion loop.

    It needs a guide and per-image classes, which ``InversionConfig.regularizers`` cannot carry: build
    it with ``REGULARIZERS.get("guidance")(obs, model, guide=..., targets=...)`` (as
    :func:`~gradleak.attacks.inversion.batched.guided_matcher` does) or use ``--guidance``.
    """

    def __init__(self, observation: Observation, model: nn.Module, guide: Guide | None = None,
                 targets: Tensor | None = None, **_: Any):
        if guide is None or targets is None:
            raise ConfigError("the guidance regulariser needs a guide and guidance classes; "
                              "enable it with --guidance oracle|search, not as a plain regulariser")
        self.guide = guide
        self.targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)

    def __call__(self, x: Tensor) -> Tensor:
        return self.guide.per_image(x, self.targets).mean()
