"""Analytic label recovery: order-free accuracy of every strategy across batch sizes.

For each batch size B, draws ``--trials`` batches of real images (labels as they come, so
classes repeat), computes the client's FedSGD gradient (model in train mode) and runs every
registered label strategy on the observation. Prints mean order-free accuracy
``Σ_c min(k̂_c, k_c) / B``, the fraction of exactly recovered batches, and the exact random
baseline for the same label multisets.

    python benchmarks/label_recovery.py --model convnet --dataset cifar10 \\
        --data-dir ../shared/data/cifar-10-batches-py --trials 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gradleak.attacks.labels import DEFAULT_METHOD, LABEL_STRATEGIES, AuxData, recover_labels
from gradleak.errors import GradleakError
from gradleak.metrics.labels import label_accuracy, random_baseline
from gradleak.models import build_model
from gradleak.models.train import train_victim
from gradleak.threat import ThreatModel, UpdateConfig, simulate_client

from _label_cli import add_batch_sizes_option, add_run_options, add_victim_options, load_splits, parse, victim_name

BATCH_SIZES = (1, 4, 8, 16, 32, 64, 128)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_victim_options(parser, model="convnet")
    parser.add_argument("--trials", type=int, default=5)
    add_batch_sizes_option(parser, BATCH_SIZES)
    parser.add_argument("--methods", default=",".join(LABEL_STRATEGIES.names()))
    parser.add_argument("--trained-steps", type=int, default=0, help="SGD steps on the train split before attacking")
    parser.add_argument("--local-steps", type=int, default=0, help="FedAvg with this many local steps (0: FedSGD)")
    parser.add_argument("--local-lr", type=float, default=0.1)
    parser.add_argument("--aux", type=int, default=0, help="hand llg+ (only) this many train-split images as public data")
    add_run_options(parser)
    args = parse(parser, argv)
    test, *rest = load_splits(args, "test", *(["train"] if (args.trained_steps or args.aux) else []))
    train = rest[0] if rest else None
    num_classes = test.num_classes
    model = build_model(args.model, test.input_shape, num_classes, width=args.width, seed=args.seed, init=args.init)
    if args.trained_steps:
        # SGD on the train split, batch 64, lr 0.01 (the project's trainer)
        train_victim(model, train.images, train.labels, args.trained_steps, train.mean, train.std, seed=args.seed)
    model.train()  # the client's gradient uses batch statistics, as in FedSGD training
    aux = None
    if args.aux:
        aux = AuxData(images=train.images[torch.randperm(len(train), generator=torch.Generator().manual_seed(7))[: args.aux]])
    config = UpdateConfig() if args.local_steps == 0 else UpdateConfig("fedavg", args.local_steps, args.local_lr)
    methods = args.methods.split(",")
    batch_sizes = args.batch_sizes

    update_kind = "FedSGD" if args.local_steps == 0 else f"FedAvg K={args.local_steps} lr={args.local_lr}"
    print(
        f"# {victim_name(args)} on {args.dataset} test, {'untrained' if not args.trained_steps else f'trained {args.trained_steps} steps'}, "
        f"{update_kind}, {args.trials} trials, default method {DEFAULT_METHOD!r}"
        + (f", llg+ given {args.aux} public train images" if args.aux else ", llg+ without public images (= llg*)")
    )
    print("# cells: mean order-free accuracy / fraction of batches recovered exactly; '-' where the method does not apply")
    header = f"{'B':>4} {'random':>7} " + " ".join(f"{m:>12}" for m in methods) + f" {'seconds':>8}"
    print(header)
    generator = torch.Generator().manual_seed(args.seed)
    for batch_size in batch_sizes:
        accuracies: dict[str, list[float]] = {m: [] for m in methods}
        baselines: list[float] = []
        started = time.perf_counter()
        for _ in range(args.trials):
            x, y, _ = test.sample_batch(batch_size, generator)
            update = simulate_client(model, x, y, config, test.mean, test.std)
            observation = ThreatModel().observe(
                model, update, test.input_shape, num_classes, test.mean, test.std, batch_size=batch_size
            )
            baselines.append(random_baseline(y, num_classes))
            for method in methods:
                try:
                    # only llg+ gets the public images: every other column stays data-free
                    estimate = recover_labels(observation, method, aux if method == "llg+" else None)
                except GradleakError:
                    continue  # e.g. idlg at B > 1, yin at B > C
                accuracies[method].append(label_accuracy(estimate.labels, y, num_classes))
        cells = []
        for method in methods:
            values = np.asarray(accuracies[method])
            cells.append(f"{values.mean():.3f}/{(values == 1.0).mean():.2f}" if len(values) else "-")
        elapsed = time.perf_counter() - started
        print(f"{batch_size:>4} {np.mean(baselines):>7.3f} " + " ".join(f"{c:>12}" for c in cells) + f" {elapsed:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
