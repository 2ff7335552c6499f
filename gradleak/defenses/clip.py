"""Norm clipping of the whole update (Abadi et al. 2016 §3.1 clip per example; here the client clips
its whole update, the client-level variant of McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models", ICLR)."""

from __future__ import annotations

import torch

from .base import DEFENSES, Defense, Param, Tensors, clip_to_norm


@DEFENSES.register("clip")
class Clip(Defense):
    """``Δ / max(1, ‖Δ‖₂ / C)``: the update's direction is kept, its norm capped at ``C``."""

    name = "clip"
    params = {"C": Param(float, low=0.0)}

    def apply(self, tensors: Tensors, generator: torch.Generator) -> Tensors:
        return clip_to_norm(tensors, self.values["C"])
