"""LLG, LLG+ and LLG* (Wainakh et al., "User-Level Label Leakage from Gradients in Federated
Learning", PoPETs 2022).

All three read ``s_c = Σ_m ∇W_cm``; with non-negative last-layer inputs each sample of class c
adds a negative *impact* m to ``s_c``. Picking follows the paper:

1. every class with ``s_c < 0`` is present: take it once and remove one impact (``s_c −= m``);
2. until B labels are taken, take ``argmin_c s_c`` of the *updated* scores and remove one impact
   from that class. (A popular implementation indexes a stale copy here and re-picks one class.)

- ``llg``:  ``m = (1 + 1/C) Σ_{c: s_c<0} s_c / B`` from the observed gradient alone.
- ``llg+``: m and per-class offsets (the positive pull ``(1/B) Σ_n p_nc Σ_m h_nm`` every sample puts
  on every class) estimated from auxiliary public images sent through θ; ``s −= offset`` before
  step 2. Without auxiliary images it falls back to dummy inputs, as ``llg*``.
- ``llg*``: the same estimates from random dummy inputs (no data needed).

The estimates follow the reference implementation: every class is assigned in turn to a whole
dummy batch of size B; m is the mean per-sample pull on the assigned class (times ``1 + 1/C``)
and the offset of class j the mean batch pull on j while j is not assigned. Both are computed in
closed form from the dummies' last-layer inputs and probabilities instead of C backward passes.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...errors import ConfigError
from ...threat import Observation
from .base import LABEL_STRATEGIES, AuxData, LabelEstimate, read_last_layer, sample_features


def llg_pick(scores: torch.Tensor, present: torch.Tensor, impact: float, batch_size: int) -> torch.Tensor:
    """LLG's two-stage picking: each class of ``present`` once, then repeated argmin of the updated scores."""
    if not impact < 0:
        raise ConfigError(
            "llg needs a negative per-sample impact on the class sums (non-negative last-layer inputs); "
            f"estimated {impact:.3g}"
        )
    s = scores.clone()
    counts = torch.zeros(s.numel(), dtype=torch.long)
    # most negative first, in case more classes look present than there are samples
    first = [int(c) for c in torch.argsort(s, stable=True) if bool(present[c])][:batch_size]
    for c in first:
        counts[c] += 1
        s[c] -= impact
    for _ in range(batch_size - len(first)):
        c = int(torch.argmin(s))
        counts[c] += 1
        s[c] -= impact
    return counts


@LABEL_STRATEGIES.register("llg")
def llg(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """LLG: impact estimated from the negative class sums of the observed gradient."""
    batch_size = obs.require_batch_size()
    s = read_last_layer(obs).class_sums
    present = s < 0
    impact = (1 + 1 / obs.num_classes) * float(s[present].sum()) / batch_size
    return LabelEstimate(counts=llg_pick(s, present, impact, batch_size), scores=s.float(), method="llg")


def _impact_and_offset(obs: Observation, batch_size: int, aux: Optional[AuxData]) -> tuple[float, torch.Tensor]:
    sample = sample_features(obs, batch_size, aux)
    mass = sample.feature_mass  # (N,)
    num_classes = obs.num_classes
    # class i assigned to every sample: its own sum gets (p_ni − 1) a_n / B per sample
    own_pull = ((sample.probs - 1.0) * mass[:, None]).mean()
    impact = (1 + 1 / num_classes) * float(own_pull) / batch_size
    # a class not assigned to the batch: the mean over the batch of p_nj a_n
    offset = (sample.probs * mass[:, None]).mean(dim=0)
    return impact, offset


def _llg_with_estimates(obs: Observation, aux: Optional[AuxData], method: str) -> LabelEstimate:
    batch_size = obs.require_batch_size()
    s = read_last_layer(obs).class_sums
    present = s < 0
    impact, offset = _impact_and_offset(obs, batch_size, aux)
    corrected = s - offset
    counts = llg_pick(corrected, present, impact, batch_size)
    return LabelEstimate(counts=counts, scores=corrected.float(), method=method)


@LABEL_STRATEGIES.register("llg+")
def llg_plus(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """LLG+: impact and offsets from auxiliary public images (dummy inputs when none are given)."""
    return _llg_with_estimates(obs, aux, "llg+")


@LABEL_STRATEGIES.register("llg*")
def llg_star(obs: Observation, aux: Optional[AuxData] = None) -> LabelEstimate:
    """LLG*: impact and offsets from random dummy inputs."""
    return _llg_with_estimates(obs, None, "llg*")
