"""Label counts from the weight gradient (Geng et al., "Towards General Deep Leakage in Federated
Learning", 2021).

``s_c = (1/B) Σ_n (p_nc − y_nc) Σ_m h_nm``. Replacing each sample's probabilities and feature mass
by their means ``p̂_c`` and ``Ô = mean_n Σ_m h_nm`` over dummy inputs sent through θ gives
``k_c ≈ B p̂_c − B s_c / Ô``; the real-valued counts are clipped at 0 and rounded to sum to B.
"""

from __future__ import annotations

from typing import Optional

from ...errors import ConfigError
from ...threat import Observation
from .base import LABEL_STRATEGIES, AuxData, LabelEstimate, read_last_layer, round_counts, sample_features


@LABEL_STRATEGIES.register("geng")
def geng(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """Counts from ``s`` with mean probabilities and feature mass estimated on dummy (or aux) inputs."""
    batch_size = obs.require_batch_size()
    s = read_last_layer(obs).class_sums
    sample = sample_features(obs, batch_size, aux)
    mean_mass = float(sample.feature_mass.mean())
    if not mean_mass > 0:
        raise ConfigError("geng needs non-negative, non-zero last-layer inputs; the dummy inputs' features sum to ≤ 0")
    real = batch_size * sample.probs.mean(dim=0) - batch_size * s / mean_mass
    return LabelEstimate(counts=round_counts(real, batch_size), scores=real.float(), method="geng")
