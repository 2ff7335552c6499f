"""Magnitude pruning of the update, the defence evaluated in Deep Leakage from Gradients (Zhu, Liu &
Han 2019, NeurIPS, §5): keep each tensor's largest-magnitude entries, zero the rest."""

from __future__ import annotations

import math

import torch

from .base import DEFENSES, Defense, Param, Tensors


def kept_count(numel: int, keep: float) -> int:
    """Entries kept of a tensor of ``numel``: ⌈keep · numel⌉ (at least one for any keep > 0)."""
    return min(numel, max(1, math.ceil(keep * numel - 1e-9)))  # the epsilon absorbs float error in keep·numel


@DEFENSES.register("prune")
class Prune(Defense):
    """Per tensor, keep the ⌈keep·n⌉ entries of largest |value| (``keep`` is the kept fraction,
    in (0, 1]; the issue's pruned fraction p is 1 − keep)."""

    name = "prune"
    params = {"keep": Param(float, low=0.0, high=1.0)}

    def apply(self, tensors: Tensors, generator: torch.Generator) -> Tensors:
        out = []
        for t in tensors:
            k = kept_count(t.numel(), self.values["keep"])
            flat = t.flatten()
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[flat.abs().topk(k, sorted=False).indices] = True  # topk: exactly k, ties broken by index
            out.append(torch.where(mask, flat, torch.zeros_like(flat)).view_as(t))
        return out
