"""Quality parity of bf16 with fp32 at equal iterations: may ``--precision auto`` be the default?

    python benchmarks/precision_parity.py [--dataset cifar10|digits] [--images 10] [--iterations 1000]
                                          [--model lenet] [--device cpu] [--threads 1]

Per image i (B = 1; seed i draws the image and initialises the untrained victim, as ``gradleak attack
--seed i`` does) the default attack (IG preset, labels recovered from the gradient) runs once in fp32
and once in bf16 autocast for the same number of iterations, back to back. Printed: PSNR and SSIM
of each, the difference, each precision's wall time, and the verdict of the rule the default
follows: parity holds when bf16's mean PSNR is within 0.5 dB of fp32's over ≥ 10 images. Timings on
a shared machine are only comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

TOLERANCE_DB = 0.5
MIN_IMAGES = 10


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "digits"))
    p.add_argument("--data-dir", default=os.environ.get("GRADLEAK_CIFAR10_DIR"))
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--model", default="lenet")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    from gradleak.config import AttackConfig
    from gradleak.runtime import resolve_device, resolve_precision, tune_allocator
    from gradleak.studies.attack import run_attack

    tune_allocator()
    device = resolve_device(args.device)
    base = dict(dataset=args.dataset, batch_size=1, iterations=args.iterations, model=args.model,
                device=args.device, threads=args.threads)
    if args.dataset == "cifar10" and args.data_dir:
        base["data_dir"] = args.data_dir
    print(f"{args.dataset}, {args.model} (untrained), B=1, {args.iterations} iterations, device {device}, "
          f"auto → {resolve_precision('auto', device)}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"{'image':>5} {'label':>5} {'PSNR fp32':>9} {'PSNR bf16':>9} {'Δ dB':>6} {'SSIM fp32':>9} "
          f"{'SSIM bf16':>9} {'s fp32':>7} {'s bf16':>7}")
    rows = []
    for i in range(args.images):
        r = {}
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            s = run_attack(AttackConfig.of(**base, seed=i, precision=precision), progress=False).summary
            r[precision] = (s["psnr"], s["ssim"], time.perf_counter() - t, s["label_accuracy"])
        (pf, sf, tf, la), (pb, sb, tb, _) = r["fp32"], r["bf16"]
        rows.append((pf, pb, sf, sb, tf, tb))
        print(f"{i:5d} {la:5.2f} {pf:9.2f} {pb:9.2f} {pb - pf:+6.2f} {sf:9.3f} {sb:9.3f} {tf:7.1f} {tb:7.1f}",
              flush=True)
    n = len(rows)
    mean = [sum(col) / n for col in zip(*rows)]
    diffs = [pb - pf for pf, pb, *_ in rows]
    within = sum(abs(d) <= TOLERANCE_DB for d in diffs)
    print(f"{'mean':>5} {'':5} {mean[0]:9.2f} {mean[1]:9.2f} {mean[1] - mean[0]:+6.2f} {mean[2]:9.3f} "
          f"{mean[3]:9.3f} {mean[4]:7.1f} {mean[5]:7.1f}")
    holds = n >= MIN_IMAGES and abs(mean[1] - mean[0]) <= TOLERANCE_DB
    print(f"mean PSNR bf16 − fp32 = {mean[1] - mean[0]:+.2f} dB over {n} images (per image within "
          f"{TOLERANCE_DB} dB: {within}/{n}; range {min(diffs):+.2f} … {max(diffs):+.2f}); wall-time ratio "
          f"fp32/bf16 {mean[4] / mean[5]:.2f}×; parity (|Δ mean| ≤ {TOLERANCE_DB} dB, ≥ {MIN_IMAGES} images): "
          f"{'holds' if holds else 'does not hold'}")


if __name__ == "__main__":
    main()
