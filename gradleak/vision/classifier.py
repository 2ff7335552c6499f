"""An auxiliary classifier trained by the attacker on PUBLIC data (never the victim's batch).

A stand-in for CLIP that needs no weights: the attacker trains a small CNN on a public split of the
same domain, then uses it to guide inversion (the ``classifier`` guide) or to label reconstructions
(the ``classifier`` labeller). Noise augmentation during training makes it tolerant of the artefacts
reconstructions carry.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry


class SmallCNN(nn.Module):
    """conv–BN–ReLU stages with 2×2 max-pools down to ≤ 4 px, then a 2×2 average pool and a linear head.

    ~20 k parameters on 8×8 digits, ~0.25 M on 32×32 CIFAR: a few hundred steps train on a CPU in seconds
    (digits) to tens of seconds (CIFAR).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        c, size = width, image_size
        if size > 8:  # pool straight after the stem: full-resolution wide convs dominate CPU time
            layers.append(nn.MaxPool2d(2))
            size //= 2
        while size > 4:
            nxt = min(2 * c, 4 * width)
            layers += [nn.Conv2d(c, nxt, 3, padding=1), nn.BatchNorm2d(nxt), nn.ReLU(), nn.MaxPool2d(2)]
            c, size = nxt, size // 2
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def _small_cnn(input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(input_shape[0], num_classes, input_shape[1])


def _victim_arch(name: str) -> Callable[[tuple[int, int, int], int, int], nn.Module]:
    def build(input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
        from ..models import build_model

        return build_model(name, input_shape, num_classes, seed=seed)

    return build


AUX_ARCHS: Registry[Callable[[tuple[int, int, int], int, int], nn.Module]] = Registry("auxiliary classifier")
AUX_ARCHS.add("cnn", _small_cnn)
AUX_ARCHS.add("lenet", _victim_arch("lenet"))
AUX_ARCHS.add("convnet", _victim_arch("convnet"))


def _augment(x: Tensor, gen: torch.Generator, max_shift: int, flip: bool, noise_std: float) -> Tensor:
    """Random translation (zero padding), optional horizontal flip, Gaussian pixel noise of random σ."""
    b, _, h, w = x.shape
    if max_shift > 0:
        padded = F.pad(x, (max_shift,) * 4)
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
        x = padded[..., dy : dy + h, dx : dx + w]
    if flip:
        mask = torch.rand(b, 1, 1, 1, generator=gen) < 0.5
        x = torch.where(mask, x.flip(-1), x)
    if noise_std > 0:
        sigma = torch.rand(b, 1, 1, 1, generator=gen) * noise_std
        x = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    return x


def train_aux_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    steps: int = 300,
    seed: int = 0,
    arch: str = "cnn",
    batch_size: int = 64,
    lr: float = 3e-3,
    noise_std: float = 0.2,
    flip: bool | None = None,
) -> nn.Module:
    """Train a classifier on public images (N, C, H, W) in [0, 1] with Adam; returns it in eval mode.

    Augmentation: shifts of ±H/8 px, random σ ∈ [0, ``noise_std``] Gaussian noise (reconstructions are
    noisy), and horizontal flips for colour images (``flip=None``) — digits are not mirror-symmetric.
    """
    if images.dim() != 4:
        raise ConfigError(f"training images must be (N, C, H, W); got {tuple(images.shape)}")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (images.shape[0],):
        raise ConfigError(f"{labels.numel()} labels for {images.shape[0]} training images")
    if images.shape[0] == 0:
        raise ConfigError("no training images for the auxiliary classifier")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(f"training labels must lie in [0, {num_classes - 1}]")
    if steps < 1:
        raise ConfigError(f"classifier training steps must be ≥ 1; got {steps}")
    factory = AUX_ARCHS.get(arch)
    shape = tuple(images.shape[1:])
    flip = shape[0] == 3 if flip is None else flip
    max_shift = max(1, shape[1] // 8)
    images = images.float()

    with torch.random.fork_rng(devices=[]):
        model = factory(shape, num_classes, seed)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        model.train()
        n = images.shape[0]
        order = torch.randperm(n, generator=gen)
        pos = 0
        for _ in range(steps):
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            x = _augment(images[idx], gen, max_shift, flip, noise_std)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def train_public_classifier(public_images: Tensor, public_labels: Tensor, num_classes: int,
                            steps: int = 300, seed: int = 0) -> nn.Module:
    """The classifier guide's model, trained on the attacker's PUBLIC split (never the victim batch).

    Delegates to :func:`train_aux_classifier` (noise-augmented small CNN).
    """
    return train_aux_classifier(public_images, public_labels, num_classes, steps=steps, seed=seed)


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of ``model`` on labelled images."""
    pred = model(images.float()).argmax(dim=1)
    return float((pred == torch.as_tensor(labels)).float().mean())
