"""FLOP counts and the machine's measured matrix peak, shared by the speed benchmarks.

Counts are of matrix products and convolutions only (``torch.utils.flop_counter``); elementwise work
is not counted, so "achieved" rates are of the dense work, as vendors quote peaks.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``convolution_backward``, one forward-sized convolution per requested output.

    torch's own formula ignores ``groups`` for the weight gradient and so counts the grouped
    convolutions ``vmap`` makes of per-candidate weight gradients P times over.
    """
    # a forward conv's MACs: every output (input, if transposed) element × (C_in / groups) × k…
    per_conv = 2 * math.prod(x_shape if transposed else grad_out_shape) * math.prod(w_shape[1:])
    return per_conv * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(fn: Callable[[], object]) -> float:
    """Matrix-product and convolution FLOPs of one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as c:
        fn()
    return float(c.get_total_flops())


def matmul_peak(dtype: torch.dtype, device: str = "cpu", n: int = 2048, seconds: float = 1.0) -> tuple[float, int]:
    """(FLOP/s, size) of an n×n matrix product in ``dtype`` here: the peak the loops are measured against.

    n stops doubling from 256 at the first size one product of which takes over 0.1 s, so that an
    emulated dtype (bf16 on a CPU without bf16 units runs at ~1 GFLOP/s) is measured in seconds, not hours.
    """
    size = 256
    while True:
        a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
        start = time.perf_counter()
        float((a @ b)[0, 0])
        if size >= n or time.perf_counter() - start > 0.1:
            break
        size *= 2
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        c = a @ b
        calls += 1
    float(c[0, 0])  # wait for a GPU's queue
    return 2 * size ** 3 * calls / (time.perf_counter() - start), size
