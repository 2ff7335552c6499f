"""Labellers: name what is in reconstructed images (the seed's semantic label reconstruction).

Malcewicz, Stępka, Turner, Dubrawski 2025: after images are reconstructed from a gradient,
a vision-language model labels them. Every labeller maps images to a probability table over
an open vocabulary of class names; the registry ``LABELLERS`` builds one by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry
from .assignment import constrained_assignment
from ..vision.prompts import check_class_names, resolve_templates


class Labeller(Protocol):
    """Anything with ``probabilities(images, class_names) -> (N, C)`` rows summing to 1."""

    def probabilities(self, images: Tensor, class_names: list[str]) -> Tensor: ...


@dataclass
class SemanticLabels:
    """A labeller's verdict on N reconstructions.

    ``top1[i]`` is the most probable class of reconstruction i; ``constrained[i]`` the class
    under the count constraint from gradient label recovery (None when no counts were given).
    """

    probabilities: Tensor
    class_names: list[str]
    top1: list[int]
    constrained: list[int] | None = None

    @property
    def predicted(self) -> list[int]:
        """The constrained labels when available, else top-1."""
        return self.constrained if self.constrained is not None else self.top1

    def names(self) -> list[str]:
        return [self.class_names[i] for i in self.predicted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "probabilities": [[round(float(p), 6) for p in row] for row in self.probabilities],
            "top1": list(self.top1),
            "constrained": None if self.constrained is None else list(self.constrained),
            "names": self.names(),
        }


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"images to label must be a tensor (N, C, H, W); got {shape}")
    if not torch.isfinite(images).all():
        raise ConfigError("images to label hold NaN or inf")
    return images


class ClipLabeller:
    """Zero-shot CLIP: p(c | x) = softmax_c(τ · cos(E_img(x), E_txt(prompt(c)))) (Radford et al. 2021).

    ``templates`` may be a prompt set name ("default", "ensemble"), a file, or a list of templates;
    several templates form a prompt ensemble (averaged text embeddings).
    """

    def __init__(self, backend: Any, templates: str | Sequence[str] | None = None, batch_size: int = 64):
        self.backend = backend
        self.templates = resolve_templates(templates)
        self.batch_size = batch_size

    @torch.no_grad()
    def probabilities(self, images: Tensor, class_names: list[str]) -> Tensor:
        images = _check_images(images)
        names = check_class_names(class_names)
        rows = [
            self.backend.logits(images[i : i + self.batch_size], names, self.templates).softmax(dim=-1)
            for i in range(0, images.shape[0], self.batch_size)
        ]
        return torch.cat(rows).float().cpu()


class ClassifierLabeller:
    """An auxiliary classifier trained on public data; its outputs are read by class name.

    ``model_classes`` names the classifier's output units; a request for other names (a subset,
    another order) is answered by renormalising the softmax over the requested columns.
    """

    def __init__(self, model: nn.Module, model_classes: Sequence[str], input_shape: tuple[int, ...] | None = None):
        self.model = model.eval()
        self.model_classes = check_class_names(model_classes)
        self.input_shape = None if input_shape is None else tuple(input_shape)

    @classmethod
    def train(
        cls,
        images: Tensor,
        labels: Tensor,
        class_names: Sequence[str],
        steps: int = 300,
        seed: int = 0,
        **train_kwargs: Any,
    ) -> "ClassifierLabeller":
        """Train the auxiliary classifier on PUBLIC labelled images (never the victim's batch)."""
        from ..vision.classifier import train_aux_classifier

        names = check_class_names(class_names)
        model = train_aux_classifier(images, labels, len(names), steps=steps, seed=seed, **train_kwargs)
        return cls(model, names, input_shape=tuple(images.shape[1:]))

    @torch.no_grad()
    def probabilities(self, images: Tensor, class_names: list[str]) -> Tensor:
        images = _check_images(images)
        if self.input_shape is not None and tuple(images.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"the auxiliary classifier takes images {self.input_shape}; got {tuple(images.shape[1:])}"
            )
        names = check_class_names(class_names)
        unknown = [n for n in names if n not in self.model_classes]
        if unknown:
            raise ConfigError(f"the auxiliary classifier does not know the classes {unknown}")
        columns = torch.tensor([self.model_classes.index(n) for n in names])
        device = next(self.model.parameters()).device
        logits = self.model(images.float().to(device)).cpu()
        return logits[:, columns].softmax(dim=-1)


class UniformLabeller:
    """No semantic evidence: every class equally likely (the gradient-counts-only baseline)."""

    def probabilities(self, images: Tensor, class_names: list[str]) -> Tensor:
        images = _check_images(images)
        names = check_class_names(class_names)
        return torch.full((images.shape[0], len(names)), 1.0 / len(names))


def _build_clip(
    backend: Any = None, model: str | None = None, device: str = "cpu", templates: Any = None, **kw: Any
) -> ClipLabeller:
    if backend is None:
        from ..vision.clip import DEFAULT_CLIP_MODEL, load_clip

        backend = load_clip(model or DEFAULT_CLIP_MODEL, device=device)
    return ClipLabeller(backend, templates=templates, **kw)


def _build_classifier(
    model: nn.Module | None = None,
    class_names: Sequence[str] | None = None,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    **kw: Any,
) -> ClassifierLabeller:
    if class_names is None:
        raise ConfigError("the classifier labeller needs class_names (the names of its output units)")
    if model is not None:
        return ClassifierLabeller(model, class_names, input_shape=kw.get("input_shape"))
    if images is None or labels is None:
        raise ConfigError("the classifier labeller needs a trained model or public images and labels to train on")
    return ClassifierLabeller.train(images, labels, class_names, **kw)


LABELLERS: Registry[Callable[..., Labeller]] = Registry("labeller")
LABELLERS.add("clip", _build_clip)
LABELLERS.add("classifier", _build_classifier)
LABELLERS.add("none", lambda **_: UniformLabeller())


def build_labeller(name: str, **kwargs: Any) -> Labeller:
    """A labeller by registry name: ``clip`` (backend= or model=, templates=), ``classifier``
    (model= and class_names=, or images=, labels=, class_names= to train one), ``none`` (uniform)."""
    return LABELLERS.get(name)(**kwargs)


def label_images(
    labeller: Labeller,
    images: Tensor,
    class_names: Sequence[str],
    counts: Sequence[int] | Tensor | None = None,
) -> SemanticLabels:
    """Label reconstructions; with ``counts`` (per class, from gradient label recovery) also the
    count-constrained assignment that maximises the total log-probability."""
    names = check_class_names(class_names)
    probs = labeller.probabilities(images, names)
    if probs.shape != (images.shape[0], len(names)):
        raise ConfigError(
            f"labeller returned a {tuple(probs.shape)} table for {images.shape[0]} images × {len(names)} classes"
        )
    constrained = None
    if counts is not None:
        constrained = constrained_assignment(probs.clamp_min(1e-12).log(), counts)
    return SemanticLabels(probs, names, [int(i) for i in probs.argmax(dim=1)], constrained)


def semantic_accuracy(
    labels: SemanticLabels, true: Sequence[int], perm: Sequence[int] | None = None
) -> dict[str, float]:
    """Order-free accuracy of the predicted names against the originals' true class indices, its
    random baseline, and, given the image matching ``perm`` (``perm[i]`` = original matched to
    reconstruction i), the per-instance accuracy under that matching."""
    from ..metrics.labels import label_accuracy, matched_label_accuracy, random_baseline

    num_classes = len(labels.class_names)
    out = {
        "order_free": label_accuracy(labels.predicted, true, num_classes),
        "random_baseline": random_baseline(true, num_classes),
    }
    if perm is not None:
        out["matched"] = matched_label_accuracy(labels.predicted, true, perm)
    return out
