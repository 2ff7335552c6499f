"""Label recovery under a known whole-update clip (``knows_defense``; docs/ALGORITHMS.md,
"Defence-aware attacks").

Clipping scales the update by ``c = min(1, C/‖g‖) ≤ 1``. idlg, yin and llg read signs, minima or
ratios and do not care; the count solvers (geng, llg+/llg*, ilrg, ilrg-dummy) read the bias identity
``B ∇b = P − k`` (P: the batch's summed probabilities, k: the counts) in absolute units, so a clipped
update reads as a batch with fewer labels than it has. Undone here:

- an observed norm below C means nothing was clipped (c = 1 exactly);
- otherwise ``u = 1/c`` is the one unknown of ``k(u) = P̂ − u B ∇b_obs``: the bias identity alone
  does not fix it (both sides sum to B for any u), but the counts must be non-negative integers summing
  to B. With ``P̂ = B · mean softmax`` over dummy (or public) inputs (Geng et al. 2021; Ma et al. 2023)
  û is the u in ``[1, B / max|B ∇b_obs|]`` (no class can move by more than B) whose ``k(u)`` lies
  nearest a valid count vector; the update is rescaled by û and the chosen strategy runs on it.

The clip must be the only thing that changed the update's scale: a whole-update ``clip``, a
``client-dp`` without noise, or a ``dp-sgd`` without noise at B = 1 (one example: per-example
clipping is whole-update clipping). Noise swamps the scale, and per-example factors differ.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from ...defenses import global_norm
from ...threat import Observation
from .base import AuxData, read_last_layer, round_counts, sample_features

_GRID = 400  # candidate values of u, log-spaced


def clip_norm(obs: Observation) -> Optional[float]:
    """C of the one noiseless whole-update clip in ``obs``'s defence record (in gradient units), or None."""
    record = [d for d in obs.defenses or [] if not (d["name"] == "secagg" and d.get("N", 1) == 1)]
    if len(record) != 1:
        return None
    d, u = record[0], obs.update
    noiseless = d["name"] == "clip" or (d["name"] in ("client-dp", "dp-sgd") and d["sigma"] == 0)
    if not noiseless or (d["name"] == "dp-sgd" and (obs.batch_size != 1 or u.kind != "fedsgd")):
        return None
    scale = u.gradient_scale()
    return None if scale is None else float(d["C"]) * scale


def clip_scale(obs: Observation, aux: Optional[AuxData] = None) -> Optional[float]:
    """û = 1/ĉ ≥ 1 for a clipped update (1.0 when its norm shows no clipping), None when the record
    has no clip this module can undo or the batch size is unknown."""
    C = clip_norm(obs)
    if C is None or obs.batch_size is None:
        return None
    norm = float(global_norm(obs.gradient()))
    if norm < C * (1 - 1e-4):
        return 1.0
    b = obs.batch_size
    layer = read_last_layer(obs)
    if layer.grad_bias is None:
        return None
    g = b * layer.grad_bias
    top = b / float(g.abs().max().clamp(min=1e-300))
    if top <= 1:
        return 1.0
    p_hat = b * sample_features(obs, b, aux).probs.mean(dim=0)
    grid = torch.logspace(0, torch.log10(torch.tensor(top)).item(), _GRID, dtype=torch.float64)
    k = p_hat[None, :] - grid[:, None] * g[None, :]
    gaps = torch.stack([(row - round_counts(row, b).double()).square().sum() for row in k])
    return float(grid[int(torch.argmin(gaps))])


def undo_clip(obs: Observation, aux: Optional[AuxData] = None) -> Observation:
    """``obs`` with its update rescaled by :func:`clip_scale` (itself when there is nothing to undo)."""
    u = clip_scale(obs, aux)
    if u is None or u == 1.0:
        return obs
    return replace(obs, update=replace(obs.update, tensors=[t * u for t in obs.update.tensors]))
