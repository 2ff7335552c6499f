"""Seconds per Inverting-Gradients iteration: gradleak vs the textbook loop.

ConvNet-64 on CIFAR-size input (3×32×32, 10 classes), B = 1 and B = 4. The reference is the plain
way every toolkit writes it: ``autograd.grad(create_graph=True)``, a per-tensor cosine, backward,
signed Adam, in fp32. gradleak's loop is timed in fp32 and bf16 autocast. The public toolkit
breaching measured 0.165 s/it (B=1) and 0.589 s/it (B=4) on this machine class.

    python benchmarks/attack_speed.py [--iterations 20] [--batch-sizes 1 4] [--threads N] [--client-mode eval]
                                      [--allocator default] [--repeats 3] [--breaching] [--device cpu|cuda|auto]

``gradleak auto`` is ``--precision auto``: bf16 where the device computes it natively
(:func:`gradleak.runtime.native_bf16`), else fp32; its row names what it resolved to.

``--breaching`` also times breaching's own loop on this machine, in fp32 (its default) and with its
``mixed_precision`` switch (bf16 autocast here), on the same model and gradient; it needs breaching
installed (see ``breaching_loop.py``). The last column then compares with breaching's fp32 loop as
timed here rather than with the published figure.

Each loop is timed ``--repeats`` times, the loops interleaved, and the fastest run of each is kept
(the machine's speed drifts by 10–20 % between minutes). Per-iteration times leave out the one-off
work of a run: the reference loop times N iterations after two untimed ones; gradleak's and
breaching's loops are timed as the difference of runs of 2N and N iterations (gradleak scores the
final images once more in fp32; breaching sets up its trial).

Rates: each row also gives the achieved dense rate (matrix-product and convolution FLOPs of one
iteration, counted once with ``torch.utils.flop_counter``; every loop does the same dense work) and
its share of this machine's measured peak for the loop's precision (an n = 2048 matrix product in
fp32, or in bf16 for the bf16 loops), measured at the start of the run. Where bf16 is not native
(:func:`gradleak.runtime.native_bf16`: no AMX, AVX512-BF16 or Arm BF16) the bf16 loops are skipped:
on a 2-core AMD EPYC without AVX-512, one thread, emulated bf16 ran a 3×3 convolution of 256 channels
at 32×32 px at 0.4 GFLOP/s, fp32 at 45 GFLOP/s.

``--allocator tuned`` (the default, as in the CLI) applies :func:`gradleak.runtime.tune_allocator` to
the whole process, so the reference loop gets it too; ``default`` leaves glibc as it is.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch import nn

from gradleak.attacks.inversion import InversionConfig
from gradleak.attacks.inversion.invert import GradientMatcher, _optimise
from gradleak.models import build_model
from gradleak.errors import ConfigError
from gradleak.runtime import native_bf16, resolve_device, resolve_precision, tune_allocator
from gradleak.threat import ThreatModel, simulate_client

BREACHING = {1: 0.165, 4: 0.589}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def observation(batch_size: int, client_mode: str = "train", device: str = "cpu"):
    torch.manual_seed(0)
    model = build_model("convnet", (3, 32, 32), 10, width=64, seed=0).train(client_mode == "train").to(device)
    x, y = torch.rand(batch_size, 3, 32, 32).to(device), torch.randint(0, 10, (batch_size,)).to(device)
    update = simulate_client(model, x, y, mean=MEAN, std=STD)
    obs = ThreatModel(knows_labels=True).observe(model, update, (3, 32, 32), 10, MEAN, STD, batch_size, y)
    return obs, y


def reference_loop(obs, labels, iterations: int) -> float:
    """The textbook IG iteration (per-tensor cosine, create_graph), timed per iteration."""
    model = obs.model
    params = list(model.parameters())
    target = obs.gradient()
    m = torch.tensor(MEAN, device=labels.device).view(1, 3, 1, 1)
    s = torch.tensor(STD, device=labels.device).view(1, 3, 1, 1)
    x = torch.rand(labels.shape[0], 3, 32, 32).to(labels.device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.1)

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model((x - m) / s), labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, target))
        gn = sum(g.pow(2).sum() for g in grads).sqrt()
        tn = sum(t.pow(2).sum() for t in target).sqrt()
        rec = 1 - dot / (gn * tn) + 0.05 * (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
        rec.backward()
        x.grad.sign_()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    float(x.detach().sum())  # wait for a GPU's queued kernels
    return (time.perf_counter() - start) / iterations


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass


def gradleak_loop(obs, labels, iterations: int, precision: str) -> float:
    """Seconds per iteration of gradleak's attack loop: runs of N and 2N iterations, differenced, so
    that the one-off work of a run (the final fp32 scoring of the images) is not counted."""
    cfg = InversionConfig(precision=precision, regularizers={"tv": 0.05})
    matcher = GradientMatcher(obs, cfg, labels)
    x0 = torch.rand(labels.shape[0], 3, 32, 32)

    def run(n: int) -> float:
        start = time.perf_counter()
        _optimise(matcher, x0, replace(cfg, iterations=n), _NoBar(), 0)
        return time.perf_counter() - start

    run(2)  # warm-up
    return (run(2 * iterations) - run(iterations)) / iterations


def iteration_flops(obs, labels) -> float:
    """Dense FLOPs of one gradleak iteration: the matching loss and its gradient to the pixels."""
    from _flops import count_flops

    matcher = GradientMatcher(obs, InversionConfig(regularizers={"tv": 0.05}), labels)
    x = torch.rand(labels.shape[0], 3, 32, 32, device=labels.device, requires_grad=True)

    def one():
        _, total = matcher.matching_loss(x * 1)  # x * 1: the counter refuses a leaf input under autograd.grad
        torch.autograd.grad(total, [x])

    return count_flops(one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                        help="where the victim and the attack run (auto: cuda when available)")
    parser.add_argument("--client-mode", choices=["train", "eval"], default="train",
                        help="BN mode of the victim: train (batch statistics) or eval (gradleak attack's default)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop; the fastest is kept")
    parser.add_argument("--allocator", choices=["tuned", "default"], default="tuned",
                        help="glibc malloc settings for the whole process (see gradleak.runtime)")
    parser.add_argument("--breaching", action="store_true",
                        help="also time breaching's own loop here (pip install --no-deps breaching==0.1.2 hydra-core)")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        parser.error(str(err))
    auto = resolve_precision("auto", device)
    if args.breaching:
        from breaching_loop import breaching_loop, import_breaching

        try:
            import_breaching()  # fail before any timing if it is not installed
        except ImportError as err:
            parser.error(f"--breaching: {err}")
    tuned = args.allocator == "tuned" and tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.iterations} timed iterations (best of {args.repeats}), BN in {args.client_mode} mode, "
          f"allocator {'tuned' if tuned else 'default'}, device {device}, precision auto → {auto}")
    from _flops import matmul_peak

    native = native_bf16(device)
    peak = {p: matmul_peak(dtype, device) for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print("measured peak (n×n matrix product): " + ", ".join(f"{p} {rate / 1e9:.0f} GFLOP/s (n = {n})"
                                                             for p, (rate, n) in peak.items()))
    if not native:
        print("bf16 is not native on this device (emulated through fp32): the bf16 loops are skipped")
    last = "vs breaching here" if args.breaching else "vs breaching"
    print(f"{'B':>3} {'loop':<22} {'s/iter':>8} {'vs reference':>13} {last:>18} {'GFLOP/s':>8} {'of peak':>8}")
    for b in args.batch_sizes:
        obs, labels = observation(b, args.client_mode, device)
        flops = iteration_flops(obs, labels)
        loops = {
            "reference fp32": lambda: reference_loop(obs, labels, args.iterations),
            "gradleak fp32": lambda: gradleak_loop(obs, labels, args.iterations, "fp32"),
            "gradleak bf16": lambda: gradleak_loop(obs, labels, args.iterations, "bf16"),
            f"gradleak auto ({auto})": lambda: gradleak_loop(obs, labels, args.iterations, "auto"),
        }
        if args.breaching:
            loops["breaching fp32"] = lambda: breaching_loop(obs, labels, args.iterations)
            loops["breaching amp bf16"] = lambda: breaching_loop(obs, labels, args.iterations, mixed_precision=True)
        if not native:
            loops = {name: loop for name, loop in loops.items() if "bf16" not in name}
        best = {name: float("inf") for name in loops}
        for _ in range(args.repeats):
            for name, loop in loops.items():
                best[name] = min(best[name], loop())
        ref = best["reference fp32"]
        breaching = best["breaching fp32"] if args.breaching else BREACHING.get(b)
        for name, sec in best.items():
            vs_b = f"{breaching / sec:17.2f}×" if breaching else f"{'-':>18}"
            low = "bf16" in name and not name.endswith("(fp32)")
            rate = flops / sec
            print(f"{b:>3} {name:<22} {sec:8.3f} {ref / sec:12.2f}× {vs_b} {rate / 1e9:8.0f} "
                  f"{rate / peak['bf16' if low else 'fp32'][0]:7.0%}")
        print(f"    ({flops / 1e9:.2f} GFLOP per iteration, dense work only)")


if __name__ == "__main__":
    main()
