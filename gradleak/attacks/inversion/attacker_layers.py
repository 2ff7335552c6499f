"""Layers for the attacker's copy of the model: cheaper second derivatives, same values.

**Convolutions.** Gradient matching differentiates the parameter gradient ``g(x)`` once more, to
the pixels. PyTorch's double backward of a convolution also computes ``∂ gI / ∂ W`` (the
weight-shaped convolution of the incoming grad-of-grad with the output gradient), and its
first-order backward computes the weight gradient again during the pixel pass, although nothing
downstream asks for either there: one conv in eight on ConvNet-64 (26.0 instead of 29.7 GFLOP per
iteration at B = 1). Here the first-order backward is a function whose own backward returns
gradients for ``gO`` and ``x`` only, and the first-order backward asks the autograd engine which
outputs this pass will use. Values are those of ``F.conv2d``: same kernels, only fewer of them.

The derivative of the matching loss with respect to the *weights* is therefore not available through
a patched model. The attacker never needs it; its copy of the model is private to the matcher.

**Train-mode BatchNorm.** PyTorch's double backward of batch normalisation is a composite of some
thirty reductions and products per layer (a fifth of a ConvNet-64 iteration at B = 1). Here the
forward and the first-order backward are PyTorch's fused kernels, and the first-order backward is
a function whose backward is written out: three per-channel sums, and x̂ folded into per-channel
coefficients so that each output map is one pass over each input map. It is complete (gradients to
the output gradient, the input and the weight) and checked against finite differences in the
tests. Eval-mode BN is written as the affine map it is.

**Low-precision copies.** Under bf16 autocast, conv and linear weights are kept in bf16 once
(:func:`low_precision_copies`) instead of being rounded on every forward and their gradients cast
back to fp32 on every backward.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

_conv_backward = torch.ops.aten.convolution_backward


def _engine_needs(ctx, index: int) -> bool:
    """Whether the running backward pass uses the gradient of input ``index`` (static flag, refined
    by asking the engine; any doubt answers yes)."""
    if not ctx.needs_input_grad[index]:
        return False
    try:
        node = ctx.next_functions[index][0]
        return node is not None and bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):
        return True


def _conv_grads(g_out: Tensor, x: Tensor, weight: Tensor, spec: tuple, mask: tuple[bool, bool]):
    """``(grad_input, grad_weight)`` of ``conv2d(x, weight, *spec)`` at ``g_out``; None where unmasked."""
    stride, padding, dilation, groups = spec
    g_in, g_w, _ = _conv_backward(g_out, x, weight, None, stride, padding, dilation, False, (0, 0), groups,
                                  (*mask, False))
    return g_in, g_w


class _ConvGrad(torch.autograd.Function):
    """``(gO, x, W) → (gI, gW)`` of a convolution; differentiable in ``gO`` and ``x`` only (W comes detached)."""

    @staticmethod
    def forward(ctx, g_out, x, weight, spec, need_input):
        g_in, g_w = _conv_grads(g_out, x, weight, spec, (need_input, True))
        ctx.save_for_backward(g_out, x, weight)
        ctx.spec = spec
        return g_in, g_w

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_in, gg_w):
        g_out, x, weight = ctx.saved_tensors
        d_out = d_x = None
        if gg_w is not None:
            gg_w = gg_w.to(x.dtype)
            # <gW(x, gO), ggW> is bilinear: conv(x, ggW) against gO, and conv-input-grad(gO; ggW) against x.
            d_out = F.conv2d(x, gg_w, None, *ctx.spec)
            if ctx.needs_input_grad[1]:
                d_x = _conv_grads(g_out, x, gg_w, ctx.spec, (True, False))[0]
        if gg_in is not None:
            t = F.conv2d(gg_in.to(weight.dtype), weight, None, *ctx.spec)
            d_out = t if d_out is None else d_out + t
        return d_out, d_x, None, None, None


class _PixelConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, spec):
        ctx.save_for_backward(x, weight)
        ctx.spec = spec
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, *spec)

    @staticmethod
    def backward(ctx, g_out):
        x, weight = ctx.saved_tensors
        need_x, need_w = _engine_needs(ctx, 0), _engine_needs(ctx, 1)
        g_b = g_out.sum((0, 2, 3)) if ctx.has_bias and _engine_needs(ctx, 2) else None
        if need_w:
            g_x, g_w = _ConvGrad.apply(g_out, x, weight.detach(), ctx.spec, need_x)
            return (g_x if need_x else None), g_w, g_b, None
        if need_x:
            return _conv_grads(g_out, x, weight, ctx.spec, (True, False))[0], None, g_b, None
        return None, None, g_b, None


def _autocast_dtype(device_type: str):
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    if device_type == "cpu":  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _non_leaf(param: Tensor, dtype: torch.dtype) -> Tensor:
    """``param`` in ``dtype`` as a non-leaf view: under ``autograd.grad`` the engine refuses to say
    whether it will use a leaf's branch."""
    cast = param.to(dtype)
    return cast.view_as(cast)


def _stored(module: nn.Module, name: str, dtype: torch.dtype) -> Tensor | None:
    """``module``'s parameter ``name`` as the forward under ``dtype`` reads it: the copy kept in
    that dtype by :func:`low_precision_copies`, else the parameter."""
    copies = getattr(module, "_gradleak_copies", None)
    if copies is not None and copies[0] == dtype and name in copies[1]:
        return copies[1][name]
    return getattr(module, name)


def _pixel_conv_forward(self: nn.Conv2d, x: Tensor) -> Tensor:
    dtype = _autocast_dtype(x.device.type) or x.dtype
    weight = _non_leaf(_stored(self, "weight", dtype), dtype)
    bias = _non_leaf(_stored(self, "bias", dtype), dtype) if self.bias is not None else None
    spec = (self.stride, self.padding, self.dilation, self.groups)
    with torch.autocast(x.device.type, enabled=False):
        return _PixelConv.apply(x.to(dtype), weight, bias, spec)


def _channel(v: Tensor, dim: int) -> Tensor:
    return v.reshape([1, -1] + [1] * (dim - 2))


_bn_backward = torch.ops.aten.native_batch_norm_backward


class _BatchNormGrad(torch.autograd.Function):
    """``(gy, x, γ) → (gx, gγ, gβ)`` of train-mode BN (the fused kernel), given the forward's batch
    mean and 1/σ̃; its own backward is written out below."""

    @staticmethod
    def forward(ctx, g_y, x, weight, mean, inv_std, eps):
        g_x, g_w, g_b = _bn_backward(g_y, x, weight, None, None, mean, inv_std, True, eps, [True, True, True])
        ctx.save_for_backward(g_y, x, weight, mean, inv_std, g_w, g_b)
        return g_x, g_w, g_b

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_x, gg_w, gg_b):
        gy, x, weight, mean, inv_std, g_w, g_b = ctx.saved_tensors
        d = x.dim()
        dims = [0] + list(range(2, d))
        n = x.numel() // x.shape[1]
        acc = torch.promote_types(inv_std.dtype, torch.float32)
        w = weight.to(acc)
        zeros = w.new_zeros(w.shape)
        gg_w = zeros if gg_w is None else gg_w.to(acc)
        gg_b = zeros if gg_b is None else gg_b.to(acc)
        mean_gy, m = g_b.to(acc) / n, g_w.to(acc) / n  # mean(gy), mean(gy·x̂) per channel
        if gg_x is not None:
            s1 = gg_x.sum(dims, dtype=acc)
            s2 = inv_std * ((gg_x * x).sum(dims, dtype=acc) - mean * s1)  # Σ ggx·x̂
            s3 = (gg_x * gy).sum(dims, dtype=acc)
        else:
            s1 = s2 = s3 = zeros
        proj = inv_std * (s3 - mean_gy * s1 - m * s2)  # <ggx, gx> / γ per channel
        scale = w * inv_std
        # d/dgy of <ggx, gx> + <ggγ, gγ> + <ggβ, gβ> = ggx·scale + x̂·k + (ggβ − scale·s1/N)
        k = gg_w - scale * s2 / n
        # d/dx: through x̂ with σ̃ held, then x̂(x) and σ̃(x) (∂σ̃/∂x = x̂/N):
        # (gy·k + x̂·c − mean_g − ggx·scale·m) / σ̃
        mean_g = gg_w * mean_gy - scale * (m * s1 + s2 * mean_gy) / n
        c = -(gg_w * m - 2 * scale * m * s2 / n) - w * proj / n
        # x̂ = (x − μ)/σ̃ folded into the per-channel coefficients: every map is read once per output.
        a_x = k * inv_std
        d_gy = torch.addcmul(_channel(gg_b - scale * s1 / n - mean * a_x, d), x, _channel(a_x, d))
        b_x = c * inv_std * inv_std
        d_x = torch.addcmul(_channel(-(mean_g + mean * c * inv_std) * inv_std, d), x, _channel(b_x, d))
        d_x.addcmul_(gy, _channel(a_x, d))
        if gg_x is not None:
            d_gy.addcmul_(gg_x, _channel(scale, d))
            d_x.addcmul_(gg_x, _channel(-scale * m * inv_std, d))
        return d_gy.to(gy.dtype), d_x.to(x.dtype), proj.to(weight.dtype), None, None, None


class _TrainBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, inv_std = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g_y):
        x, weight, mean, inv_std = ctx.saved_tensors
        g_x, g_w, g_b = _BatchNormGrad.apply(g_y, x, weight, mean, inv_std, ctx.eps)
        return g_x, g_w, g_b, None


def _batch_norm_forward(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    if self.weight is None:
        return F.batch_norm(x, self.running_mean, self.running_var, None, None,
                            self.training or self.running_mean is None, 0.0, self.eps)
    if not self.training and self.running_mean is not None:
        # Running statistics: an affine map per channel, whose double backward is two products
        # (the fused kernel's is a general composite).
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return torch.addcmul(_channel(shift.to(x.dtype), x.dim()), x, _channel(scale.to(x.dtype), x.dim()))
    # Batch statistics; running statistics are never written (the matcher freezes them anyway).
    return _TrainBatchNorm.apply(x, self.weight, self.bias, self.eps)


def _linear_forward(self: nn.Linear, x: Tensor) -> Tensor:
    dtype = _autocast_dtype(x.device.type)
    if dtype is None:
        return F.linear(x, self.weight, self.bias)
    bias = _stored(self, "bias", dtype) if self.bias is not None else None
    return F.linear(x, _stored(self, "weight", dtype), bias)


def prepare_attacker_model(model: nn.Module) -> nn.Module:
    """Patch (in place) the attacker's ``model``: zero-padded ``nn.Conv2d``, ``nn.Linear`` and
    affine BatchNorm layers."""
    for m in model.modules():
        if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            m.forward = types.MethodType(_pixel_conv_forward, m)
        elif type(m) is nn.Linear:
            m.forward = types.MethodType(_linear_forward, m)
        elif type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            m.forward = types.MethodType(_batch_norm_forward, m)
    return model


def low_precision_copies(model: nn.Module, dtype: torch.dtype) -> dict[int, Tensor]:
    """Keep the weights and biases of the patched convolution and linear layers also in ``dtype``.

    Autocast rounds them to ``dtype`` on every forward and casts their gradients back to fp32 on
    every backward; the patched forwards read these copies instead (same values, two passes over
    the weights fewer per iteration). Returns ``{id(parameter): copy}``: differentiate with
    respect to the copies to get the gradient a ``dtype`` forward produces.
    """
    copies: dict[int, Tensor] = {}
    for m in model.modules():
        patched = getattr(m.forward, "__func__", None) in (_pixel_conv_forward, _linear_forward)
        if not patched:
            continue
        kept = {}
        for name in ("weight", "bias"):
            p = getattr(m, name)
            if p is not None and p.is_floating_point():
                kept[name] = p.detach().to(dtype).requires_grad_(p.requires_grad)
                copies[id(p)] = kept[name]
        m._gradleak_copies = (dtype, kept)
    return copies
