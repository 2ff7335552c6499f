"""How informative is the matching loss? Cosine distance between the true image's gradient and the
gradient of perturbed or unrelated images, for an untrained ConvNet in eval mode, under PyTorch's
default conv initialisation and under He initialisation (gradleak's default).

A loss that barely separates a random image from the true one (default init: ≈ 0.007) leaves
nothing to invert; with He init the distance grows with the perturbation.

    python benchmarks/matching_landscape.py [--data-dir ../shared/data/cifar-10-batches-py] [--width 64]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from gradleak.models import build_model


def flat_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    loss = nn.functional.cross_entropy(model((x - m) / s), y)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def default_init_convnet(width: int) -> nn.Module:
    """ConvNet with PyTorch's default conv init (what gradleak used before He init)."""
    model = build_model("convnet", (3, 32, 32), 10, width=width, seed=0)
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 folder; without it a random image is the target")
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    if args.data_dir:
        from gradleak.data import load_dataset

        data = load_dataset("cifar10", "test", args.data_dir)
        x, y = data.images[:1], data.labels[:1]
    else:
        x, y = torch.rand(1, 3, 32, 32, generator=gen), torch.tensor([3])
    probes = {f"+{int(n * 100)} % noise": (x + n * torch.randn(x.shape, generator=gen)).clamp(0, 1)
              for n in (0.01, 0.05, 0.15)}
    probes["random image"] = torch.rand(x.shape, generator=gen)
    models = {"default init": default_init_convnet(args.width),
              "He init": build_model("convnet", (3, 32, 32), 10, width=args.width, seed=0)}
    print(f"ConvNet-{args.width}, eval mode, untrained: cosine distance to the true image's gradient")
    print(f"{'probe':<14}" + "".join(f"{name:>14}" for name in models))
    rows = {p: [] for p in probes}
    for model in models.values():
        model.eval()
        target = flat_gradient(model, x, y, mean, std)
        for p, img in probes.items():
            g = flat_gradient(model, img, y, mean, std)
            rows[p].append(float(1 - g @ target / (g.norm() * target.norm())))
    for p, values in rows.items():
        print(f"{p:<14}" + "".join(f"{v:>14.4f}" for v in values))


if __name__ == "__main__":
    main()
