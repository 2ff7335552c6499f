"""Gradient-matching objectives: how far a dummy batch's gradient is from the observed one.

Each objective is built once from the observed gradient (so per-target work such as flattening
and norms is done once, not every iteration) and then called with the dummy gradient.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ...registry import Registry


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    # One concatenated vector: a handful of large ops instead of several per parameter tensor.
    return torch.cat([t.reshape(-1) for t in tensors])


class Objective:
    def __init__(self, target: Sequence[torch.Tensor]):
        self.target = _flat([t.detach().float() for t in target])

    def __call__(self, dummy: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


OBJECTIVES: Registry[Callable[[Sequence[torch.Tensor]], Objective]] = Registry("matching objective")


@OBJECTIVES.register("l2")
class L2(Objective):
    """DLG (Zhu et al., NeurIPS 2019): ``Σ_l ||g'_l − g_l||²`` over parameter tensors."""

    def __call__(self, dummy):
        return (_flat(dummy).float() - self.target).pow(2).sum()


@OBJECTIVES.register("cosine")
class Cosine(Objective):
    """Inverting Gradients (Geiping et al., NeurIPS 2020): ``1 − <g', g> / (||g'|| ||g||)``,
    all parameters flattened together."""

    def __init__(self, target):
        super().__init__(target)
        self.target_norm = self.target.norm()

    def __call__(self, dummy):
        if not torch._C._are_functorch_transforms_active():
            return _FlatCosine.apply(self.target, self.target_norm, *dummy)
        g = _flat(dummy).float()  # inside vmap/grad (batched search): plain ops
        return _one_minus_cosine(g @ self.target, g.norm(), self.target_norm)


def _one_minus_cosine(dot: torch.Tensor, g_norm: torch.Tensor, target_norm: torch.Tensor) -> torch.Tensor:
    return 1 - dot / (g_norm * target_norm).clamp_min(1e-12)


class _FlatCosine(torch.autograd.Function):
    """``1 − cos(flat(g), t)`` with its backward ``a·t + b·g`` as one pass over the few million
    gradient entries plus the pass that splits them into pieces (autograd's chain through the norm
    and the division makes five)."""

    @staticmethod
    def forward(ctx, target, target_norm, *dummy):
        g = _flat(dummy).float()
        g_norm = g.norm()
        dot = g @ target
        ctx.save_for_backward(g, target, target_norm, g_norm, dot)
        ctx.pieces = [(t.shape, t.dtype) for t in dummy]
        return _one_minus_cosine(dot, g_norm, target_norm)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        g, target, target_norm, g_norm, dot = ctx.saved_tensors
        denom = (g_norm * target_norm).clamp_min(1e-12)
        # Python floats: multiplying millions of entries by a 0-dim tensor is ~3× slower on CPU.
        a = float(-grad_out / denom)
        b = float(grad_out * dot / (denom * g_norm.square()).clamp_min(1e-30))
        if a == 0.0:
            return (None, None, *(torch.zeros(shape, dtype=dtype, device=g.device) for shape, dtype in ctx.pieces))
        # a·(t + (b/a)·g): |b/a|·|g| = |cos|·|t|, so no term swamps the other. Written over g, which
        # this backward is the last to read; the factor a rides on the pass that splits the pieces.
        d = torch.add(target, g, alpha=b / a, out=g)
        out, start = [], 0
        for shape, dtype in ctx.pieces:
            n = shape.numel()
            out.append(torch.mul(d[start:start + n].view(shape), a, out=torch.empty(shape, dtype=dtype, device=d.device)))
            start += n
        return (None, None, *out)
