"""A learned ceiling for label counts: how much better could any linear read of the gradient do?

The attacker knows θ, so it can simulate clients: batches of the dummy images ``ilrg-dummy`` uses
(``dummy_images``, from a different seed) with labels drawn uniformly. On ``--train-batches`` such
batches, fit a ridge regression from the exact last-layer observation (``B ∇b`` and the pulls
``B ∇W Wᵀ``: C + C² numbers) to the counts; with ``--lower-layers D`` add a fixed random projection
of every other parameter's gradient to D numbers. Then measure, on held-out simulated batches and on
real images (labels as they come), the regression's rounded counts against the default strategy.

The simulated world is where the regression is at its best: its batches are drawn exactly as it was
trained, and ``ilrg-dummy``'s spread model is exact there too. Where the regression stays below a
target even there, no linear estimate from the same numbers reaches it on images. Prints one row per
(model seed, B) and the ratio of the default's error rate to the regression's on the images.

    python benchmarks/label_ceiling.py --model lenet --data-dir ../shared/data/cifar-10-batches-py \\
        --batch-sizes 16,32,64 --inits 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gradleak.attacks.labels import DEFAULT_METHOD, recover_labels
from gradleak.attacks.labels.base import dummy_images, labels_from_counts, read_last_layer, round_counts
from gradleak.metrics.labels import label_accuracy
from gradleak.models import build_model, last_linear
from gradleak.threat import Observation, ThreatModel, UpdateConfig, simulate_client

from _label_cli import add_batch_sizes_option, add_run_options, add_victim_options, load_splits, parse, victim_name

_SIMULATION_SEED = 20_251_125  # not the seed of the dummies ilrg-dummy itself draws


def observe(model, x, y, data, batch_size: int) -> Observation:
    update = simulate_client(model, x, y, UpdateConfig(), data.mean, data.std)
    return ThreatModel().observe(model, update, data.input_shape, data.num_classes, data.mean, data.std,
                                 batch_size=batch_size)


def lower_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every parameter except the last linear layer's (the update's names are the parameters')."""
    last = set(last_linear(model))
    return {name: p for name, p in model.named_parameters() if name not in last}


def lower_gradient(obs: Observation) -> torch.Tensor:
    """The observed gradient of :func:`lower_parameters`, as one float64 vector."""
    grads = obs.named_gradient()
    return torch.cat([grads[name].detach().double().flatten() for name in lower_parameters(obs.model)])


def features(obs: Observation, projection: torch.Tensor | None) -> torch.Tensor:
    """``B ∇b`` and ``B ∇W Wᵀ`` (exact), then the other parameters' gradient times ``projection``."""
    layer = read_last_layer(obs)
    batch_size = obs.require_batch_size()
    parts = [batch_size * layer.grad_bias, (batch_size * layer.grad_weight @ layer.weight.T).flatten()]
    if projection is not None:
        parts.append(batch_size * lower_gradient(obs) @ projection)
    return torch.cat(parts)


class Ridge:
    """Least squares on standardised features with an L2 penalty ``alpha`` (intercept unpenalised)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, alpha: float):
        self.mean, self.scale = x.mean(dim=0), x.std(dim=0).clamp(min=1e-12)
        z = (x - self.mean) / self.scale
        self.intercept = y.mean(dim=0)
        gram = z.T @ z + alpha * torch.eye(z.shape[1], dtype=z.dtype)
        self.coef = torch.linalg.solve(gram, z.T @ (y - self.intercept))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept


def error_ratio(default_accuracy: float, ridge_accuracy: float) -> float:
    """The default's error rate over the ridge's: above 1 where the ridge does better."""
    return (1 - default_accuracy) / max(1 - ridge_accuracy, 1e-12)


def accuracy(counts: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    return label_accuracy(labels_from_counts(counts), labels, num_classes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_victim_options(parser, model="lenet")
    add_batch_sizes_option(parser, (16, 32, 64))
    parser.add_argument("--inits", type=int, default=1, help="model seeds seed, seed + 1, …")
    parser.add_argument("--train-batches", type=int, default=5000, help="simulated batches the regression is fit on")
    parser.add_argument("--test-batches", type=int, default=100, help="held-out simulated batches, and real batches")
    parser.add_argument("--lower-layers", type=int, default=0, help="project the other layers' gradient to this many numbers")
    parser.add_argument("--alpha", type=float, default=1.0, help="ridge penalty on standardised features")
    add_run_options(parser)
    args = parse(parser, argv)
    (data,) = load_splits(args, "test")
    num_classes = data.num_classes

    print(f"{victim_name(args)}, {args.train_batches} simulated batches to fit, {args.test_batches} to test "
          f"(simulated and real), lower layers: {args.lower_layers or 'no'}")
    print(f"{'seed':>4} {'B':>4} | {'simulated: ridge':>16} {DEFAULT_METHOD:>10} | {'images: ridge':>13} {DEFAULT_METHOD:>10} | "
          f"{'error ratio':>11} {'seconds':>7}")
    image_accuracies = {"ridge": [], DEFAULT_METHOD: []}
    for model_seed in range(args.seed, args.seed + args.inits):
        model = build_model(args.model, data.input_shape, num_classes, width=args.width, seed=model_seed, init=args.init)
        model.train()
        projection = None
        if args.lower_layers:
            size = sum(p.numel() for p in lower_parameters(model).values())
            projection = torch.randn(size, args.lower_layers, generator=torch.Generator().manual_seed(model_seed), dtype=torch.float64)
            projection /= args.lower_layers**0.5
        for b in args.batch_sizes:
            started = time.perf_counter()
            gen = torch.Generator().manual_seed(_SIMULATION_SEED + 1000 * model_seed + b)

            def simulated(count: int):
                for _ in range(count):
                    y = torch.randint(num_classes, (b,), generator=gen)
                    yield observe(model, dummy_images(b, data.input_shape, gen), y, data, b), y

            train = [(features(obs, projection), torch.bincount(y, minlength=num_classes)) for obs, y in simulated(args.train_batches)]
            ridge = Ridge(torch.stack([f for f, _ in train]), torch.stack([k for _, k in train]).double(), args.alpha)
            real_gen = torch.Generator().manual_seed(args.seed + b)
            real = []
            for _ in range(args.test_batches):
                x, y, _ = data.sample_batch(b, real_gen)
                real.append((observe(model, x, y, data, b), y))
            scores = {}
            for world, batches in (("simulated", list(simulated(args.test_batches))), ("images", real)):
                for obs, y in batches:
                    learned = round_counts(ridge(features(obs, projection)).clamp(min=0), b)
                    default = recover_labels(obs, DEFAULT_METHOD).counts
                    scores.setdefault((world, "ridge"), []).append(accuracy(learned, y, num_classes))
                    scores.setdefault((world, DEFAULT_METHOD), []).append(accuracy(default, y, num_classes))
            for name in image_accuracies:
                image_accuracies[name].extend(scores[("images", name)])
            mean = {key: float(np.mean(v)) for key, v in scores.items()}
            ratio = error_ratio(mean[("images", DEFAULT_METHOD)], mean[("images", "ridge")])
            print(f"{model_seed:>4} {b:>4} | {mean[('simulated', 'ridge')]:>16.4f} {mean[('simulated', DEFAULT_METHOD)]:>10.4f} | "
                  f"{mean[('images', 'ridge')]:>13.4f} {mean[('images', DEFAULT_METHOD)]:>10.4f} | {ratio:>11.2f} "
                  f"{time.perf_counter() - started:>7.0f}", flush=True)
    overall = {name: float(np.mean(v)) for name, v in image_accuracies.items()}
    print(f"images, all rows: ridge {overall['ridge']:.4f}, {DEFAULT_METHOD} {overall[DEFAULT_METHOD]:.4f}; "
          f"error ratio {DEFAULT_METHOD} / ridge = {error_ratio(overall[DEFAULT_METHOD], overall['ridge']):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
