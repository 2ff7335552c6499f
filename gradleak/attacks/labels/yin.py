"""Yin et al. label restoration (Yin et al., "See through Gradients: Image Batch Recovery via
GradInversion", CVPR 2021).

With non-negative last-layer inputs, the row ``∇W_c`` of a class present in the batch has a
clearly negative entry, while absent classes' rows are non-negative: take the B classes with the
smallest ``min_m ∇W_cm``. Assumes no repeated labels, hence B ≤ C.
"""

from __future__ import annotations

from typing import Optional

from ...errors import ConfigError
from ...threat import Observation
from .base import LABEL_STRATEGIES, AuxData, LabelEstimate, read_last_layer, select_smallest


@LABEL_STRATEGIES.register("yin")
def yin(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """B distinct labels: the classes whose weight-gradient rows reach the lowest minimum."""
    batch_size = obs.require_batch_size()
    if batch_size > obs.num_classes:
        raise ConfigError(
            f"yin assumes distinct labels, so at most {obs.num_classes} samples; the batch has {batch_size} "
            "(use llg, geng or ilrg)"
        )
    layer = read_last_layer(obs)
    scores = layer.grad_weight.min(dim=1).values
    return LabelEstimate(counts=select_smallest(scores, batch_size), scores=scores.float(), method="yin")
