"""The attacker's side models for one run — public data, the auxiliary classifier, CLIP, the
labeller — each built once, on first use, and shared by label recovery, guidance and naming."""

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

    @property
    def uses_public(self) -> bool:
        return self.uses_classifier or self.cfg.recovery.label_aux == "public"

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
    def classifier(self):
        """The auxiliary classifier, trained once on the public split (labeller and guide share it)."""
        from ..vision import train_public_classifier

        p = self.public
        return train_public_classifier(p.images, p.labels, p.num_classes, steps=self.cfg.semantic.classifier_steps,
                                       seed=self.cfg.run.seed)

    @cached_property
    def clip(self):
        from ..vision import load_clip

        return load_clip(self.cfg.semantic.clip_model)

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
            p = self.public
            return build_labeller("classifier", model=self.classifier, class_names=p.class_names,
                                  input_shape=tuple(p.images.shape[1:]))
        return build_labeller(name)

    def label_aux(self):
        """What label recovery may use: nothing (dummy inputs) or the public images (``label_aux``)."""
        from ..attacks.labels import AuxData

        if self.cfg.recovery.label_aux == "none":
            return None
        if self.cfg.recovery.label_aux != "public":
            raise ConfigError(f"unknown label_aux {self.cfg.recovery.label_aux!r}; choose none or public")
        return AuxData(self.public.images, self.public.labels)

    def guide_models(self) -> dict[str, Any]:
        """The model the configured guide needs, as ``run_guided`` takes it."""
        guide = self.cfg.semantic.guide
        return {"clip_model": self.clip if guide == "clip" else None,
                "aux_classifier": self.classifier if guide == "classifier" else None}
