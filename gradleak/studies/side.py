"""The attacker's side models for one run — public data, the auxiliary classifier, CLIP, the
labeller — each built once, on first use, and shared by label recovery, guidance and naming.

The auxiliary classifier is loaded from ``--classifier FILE`` or trained on the public split
(standard or PGD-adversarial, ``classifier_training``) through the on-disk cache
(:func:`gradleak.vision.cached_classifier`); its card (``classifier_card``) states its clean and
adversarial accuracy."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from ..config import AttackConfig
from ..data import ImageDataset, load_dataset
from ..errors import ConfigError
from .client import public_split


class AttackerSide:
    """What the attacker brings beyond the observation, for ``cfg`` on the private ``data``'s task."""

    def __init__(self, cfg: AttackConfig, data: ImageDataset | None):
        self.cfg, self.data = cfg, data

    @property
    def uses_classifier(self) -> bool:
        s = self.cfg.semantic
        return s.labeler == "classifier" or (s.guidance != "none" and s.guide == "classifier")

    @property
    def uses_clip(self) -> bool:
        s = self.cfg.semantic
        return s.labeler == "clip" or (s.guidance != "none" and s.guide == "clip")

    def build(self) -> "AttackerSide":
        """Build everything this run needs now, before any inversion (a bad model path fails first)."""
        if self.uses_clip:
            self.clip  # noqa: B018 - cached_property
        if self.uses_classifier:
            self.classifier  # noqa: B018
        if self.cfg.semantic.labeler != "none":
            self.labeller  # noqa: B018
        return self

    @cached_property
    def public(self) -> ImageDataset:
        """The attacker's public data: the other split of the client's dataset."""
        d = self.cfg.data
        return load_dataset(d.dataset, public_split(d.split), d.data_dir)

    @cached_property
    def _carded_classifier(self):
        """(model, card): loaded from ``classifier``, or trained on the public split — or found in the
        cache from an earlier run with the same data and settings. The card's accuracies are measured
        on the private split's images when this run has them (evaluator-side: never trained on),
        else on a held-out part of the public split."""
        from ..vision import cached_classifier, load_classifier

        s = self.cfg.semantic
        if s.classifier:
            loaded = load_classifier(s.classifier)
            self._check_fits(loaded.card, s.classifier)
            return loaded
        p, ev = self.public, self.data
        return cached_classifier(p.images, p.labels, p.num_classes, p.class_names, steps=s.classifier_steps,
                                 seed=self.cfg.run.seed, adversarial=s.classifier_training == "adversarial",
                                 eval_images=None if ev is None else ev.images,
                                 eval_labels=None if ev is None else ev.labels)

    def _check_fits(self, card, path: str) -> None:
        if self.data is None:
            return
        d = self.data
        if tuple(card.input_shape) != tuple(d.input_shape) or card.num_classes != d.num_classes:
            raise ConfigError(f"classifier {path} takes {tuple(card.input_shape)} images of {card.num_classes} classes; "
                              f"{d.name} has {tuple(d.input_shape)} and {d.num_classes}")
        if card.class_names and list(card.class_names) != list(d.class_names):
            # the guide indexes the classifier's outputs by class number: the order must agree
            raise ConfigError(f"classifier {path} names its classes {card.class_names}, not {d.name}'s {d.class_names}")

    @property
    def classifier(self):
        """The auxiliary classifier, built once (labeller and guide share it), on the run's device."""
        return self._carded_classifier.model.to(self.device)  # trained / cached on the CPU

    @cached_property
    def device(self):
        """Where the attacker's models run (``--device``, resolved once)."""
        from ..runtime import resolve_device

        return resolve_device(self.cfg.run.device)

    @property
    def classifier_card(self):
        """The classifier's :class:`~gradleak.vision.ClassifierCard` (clean / PGD accuracy, training)."""
        return self._carded_classifier.card

    @cached_property
    def clip(self):
        from ..vision import load_clip

        return load_clip(self.cfg.semantic.clip_model, device=self.device)

    @cached_property
    def class_names(self) -> list[str]:
        """The vocabulary the attacker names with: a user's file, or the dataset's classes."""
        from ..vision import load_class_names

        path = self.cfg.semantic.class_names
        return load_class_names(path) if path else list(self.data.class_names)

    @cached_property
    def labeller(self):
        from ..semantic import build_labeller

        name = self.cfg.semantic.labeler
        if name == "clip":
            return build_labeller("clip", backend=self.clip, templates=self.cfg.semantic.prompts)
        if name == "classifier":
            card = self.classifier_card
            return build_labeller("classifier", model=self.classifier, class_names=card.class_names,
                                  input_shape=tuple(card.input_shape))
        return build_labeller(name)

    def label_aux(self):
        """What label recovery may use: nothing (dummy inputs) or the public images (``label_aux``)."""
        from ..attacks.labels import AuxData

        if self.cfg.recovery.label_aux == "none":  # the config admits only none and public
            return None
        return AuxData(self.public.images, self.public.labels)

    def guide_models(self) -> dict[str, Any]:
        """The model the configured guide needs, as ``run_guided`` takes it."""
        guide = self.cfg.semantic.guide
        return {"clip_model": self.clip if guide == "clip" else None,
                "aux_classifier": self.classifier if guide == "classifier" else None}
