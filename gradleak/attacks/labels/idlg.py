"""iDLG: the label of a single sample (Zhao et al., "iDLG: Improved Deep Leakage from Gradients", 2020).

With B = 1, ``∇b_c = p_c − y_c`` is negative only at the true class, at any stage of training:
``ŷ = argmin_c ∇b_c``. Without a bias, ``s_c = (p_c − y_c) Σ_m h_m`` has the same sign pattern
when the last layer's input is non-negative (ReLU/sigmoid features): ``ŷ = argmin_c s_c``.
"""

from __future__ import annotations

from typing import Optional

from ...errors import ConfigError
from ...threat import Observation
from .base import LABEL_STRATEGIES, AuxData, LabelEstimate, read_last_layer, select_smallest


@LABEL_STRATEGIES.register("idlg")
def idlg(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """Recover the one label of a batch of size 1 (batch size assumed 1 when not granted)."""
    if obs.batch_size not in (None, 1):
        raise ConfigError(f"idlg recovers a single label; the batch has {obs.batch_size} samples (use llg, geng or ilrg)")
    layer = read_last_layer(obs)
    scores = layer.grad_bias if layer.grad_bias is not None else layer.class_sums
    return LabelEstimate(counts=select_smallest(scores, 1), scores=scores.float(), method="idlg")
