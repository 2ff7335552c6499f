"""Where one Inverting-Gradients iteration spends its time, by operator class, per precision and layout.

    python benchmarks/iteration_profile.py [--batch-size 1] [--iterations 10] [--threads N]
                                           [--precisions fp32,bf16] [--layouts contiguous,channels_last]

ConvNet-64, CIFAR-size input, BN in train mode (the attack_speed.py setting). For each variant: seconds
per iteration (runs of 2N and N iterations, differenced, best of two) and torch.profiler's self CPU
time of N iterations split into convolution kernels, matrix products, batch norm, copies and casts
(layout and dtype conversions), the autograd engine's own nodes, and the remaining elementwise and
reduction operators; then the three most expensive operators. ``channels_last`` puts the attacker's
model and the dummy images in NHWC, the layout oneDNN's convolutions prefer.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import replace

import torch

from attack_speed import _NoBar, observation
from gradleak.attacks.inversion import InversionConfig
from gradleak.attacks.inversion.invert import GradientMatcher, _optimise

CLASSES = (  # first match wins
    ("conv", ("conv",)),
    ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear")),
    ("batchnorm", ("batch_norm",)),
    ("copy/cast", ("copy_", "_to_copy", "::to", "contiguous", "clone", "empty_strided")),
    ("autograd", ("Backward", "autograd::")),
)


def op_class(name: str) -> str:
    for label, keys in CLASSES:
        if any(k in name for k in keys):
            return label
    return "elementwise"


def variant(batch_size: int, precision: str, layout: str, iterations: int):
    obs, labels = observation(batch_size)
    x0 = torch.rand(batch_size, 3, 32, 32)
    if layout == "channels_last":
        obs.model.to(memory_format=torch.channels_last)
        x0 = x0.contiguous(memory_format=torch.channels_last)
    cfg = InversionConfig(precision=precision, regularizers={"tv": 0.05})
    matcher = GradientMatcher(obs, cfg, labels)

    def run(n: int) -> float:
        start = time.perf_counter()
        _optimise(matcher, x0, replace(cfg, iterations=n), _NoBar(), 0)
        return time.perf_counter() - start

    run(2)
    sec = min((run(2 * iterations) - run(iterations)) / iterations for _ in range(2))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(iterations)
    shares, ops = defaultdict(float), []
    for evt in prof.key_averages():
        shares[op_class(evt.key)] += evt.self_cpu_time_total
        ops.append((evt.self_cpu_time_total, evt.key))
    total = sum(shares.values())
    top = sorted(ops, reverse=True)[:3]
    return sec, {k: v / total for k, v in shares.items()}, [(k, t / total) for t, k in top]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--layouts", default="contiguous,channels_last")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ConvNet-64, B = {args.batch_size}, "
          f"{args.iterations} iterations per timing/profile")
    labels = [c for c, _ in CLASSES] + ["elementwise"]
    print(f"{'precision':9} {'layout':14} {'s/iter':>7} " + " ".join(f"{c:>11}" for c in labels) + "  top operators")
    from gradleak.runtime import native_bf16

    for precision in args.precisions.split(","):
        if precision == "bf16" and not native_bf16():
            print("bf16        skipped: not native on this CPU (emulated through fp32)")
            continue
        for layout in args.layouts.split(","):
            sec, shares, top = variant(args.batch_size, precision, layout, args.iterations)
            print(f"{precision:9} {layout:14} {sec:7.3f} " + " ".join(f"{shares.get(c, 0):11.0%}" for c in labels)
                  + "  " + ", ".join(f"{k} {s:.0%}" for k, s in top), flush=True)


if __name__ == "__main__":
    main()
