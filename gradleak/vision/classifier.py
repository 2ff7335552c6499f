"""An auxiliary classifier trained by the attacker on PUBLIC data (never the victim's batch).

A stand-in for CLIP that needs no weights: the attacker trains a small CNN on a public split of the
same domain, then uses it to guide inversion (the ``classifier`` guide) or to label reconstructions
(the ``classifier`` labeller). Noise augmentation during training makes it tolerant of the artefacts
reconstructions carry.

A standard CNN trained on ~1 000 images has adversarial input gradients: descending its loss moves
pixels toward high-frequency patterns, not toward what the class looks like, and guidance with it
lowered SSIM on CIFAR-10. Adversarial training (``adversarial=True``; Madry et al. 2018, "Towards
Deep Learning Models Resistant to Adversarial Attacks") gives a classifier whose input gradients are
perceptually aligned (Tsipras et al. 2019; Santurkar et al. 2019, "Image Synthesis with a Single
(Robust) Classifier"): the property CLIP guidance relies on. Measured on the CIFAR-10 subset (300
steps on the 932 public images, scored on the other split's 846): clean / PGD accuracy 0.496 / 0.199
standard, 0.395 / 0.281 adversarial, at ~3.5× the training time (79 s vs 24 s on one CPU thread);
on digits 0.989 / 0.629 vs 0.980 / 0.782. Files and the on-disk cache: :mod:`gradleak.vision.cache`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry

# The L2 radius of the PGD ball in [0, 1] pixel space. 0.5 is Santurkar et al.'s (2019) CIFAR-10
# value (per-pixel RMS 0.009 on 3×32×32). On 8×8 digits the same radius is a per-pixel RMS of 0.06,
# about that of the L2 ε = 2 commonly used on 28×28 MNIST: both are "small but visible" for the domain.
DEFAULT_EPSILON = 0.5
DEFAULT_PGD_STEPS = 5


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


# An architecture factory: (input_shape, num_classes, seed, width) → module. ``width`` None means the
# architecture's default; :func:`arch_width` resolves it, so a saved card names every argument.
ArchFactory = Callable[..., nn.Module]
SMALL_CNN_WIDTH = 32


def _small_cnn(input_shape: tuple[int, int, int], num_classes: int, seed: int = 0, width: int | None = None) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(input_shape[0], num_classes, input_shape[1], width=width or SMALL_CNN_WIDTH)


def _victim_arch(name: str) -> ArchFactory:
    def build(input_shape: tuple[int, int, int], num_classes: int, seed: int = 0, width: int | None = None) -> nn.Module:
        from ..models import build_model

        return build_model(name, input_shape, num_classes, width=width, seed=seed)

    return build


AUX_ARCHS: Registry[ArchFactory] = Registry("auxiliary classifier")
AUX_ARCHS.add("cnn", _small_cnn)
AUX_ARCHS.add("lenet", _victim_arch("lenet"))
AUX_ARCHS.add("convnet", _victim_arch("convnet"))


def arch_width(arch: str, width: int | None = None) -> int:
    """The width ``arch`` is built with when asked for ``width`` (None: its default)."""
    if width is not None:
        return int(width)
    if arch == "cnn":
        return SMALL_CNN_WIDTH
    from ..models import DEFAULT_WIDTH

    return int(DEFAULT_WIDTH[arch])


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


def _l2(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))


def pgd_l2(model: nn.Module, x: Tensor, y: Tensor, epsilon: float = DEFAULT_EPSILON, steps: int = DEFAULT_PGD_STEPS,
           step_size: float | None = None, gen: torch.Generator | None = None) -> Tensor:
    """Projected gradient ascent on the cross-entropy within an L2 ball of radius ``epsilon`` around
    ``x`` (pixels in [0, 1], kept there); Madry et al. 2018. Random start inside the ball; each step
    moves ``step_size`` (default 2.5 ε / steps, Madry et al.'s rule, so the ball's far side is
    reachable) along the normalised gradient. The model's mode is left as it is: callers craft
    attacks in eval mode so BN running statistics never see adversarial batches.

    Hand-written (a dozen lines) rather than from torchattacks or ART: those pull in torchvision or
    a large toolkit for this loop, and draw their random start from the global RNG, where this one
    takes ``gen`` so a seeded training run is reproducible.
    """
    if epsilon <= 0 or steps < 1:
        return x.detach()
    step = 2.5 * epsilon / steps if step_size is None else step_size
    x = x.detach()
    noise = torch.randn(x.shape, generator=gen).to(x)
    radius = epsilon * torch.rand(x.shape[0], *([1] * (x.dim() - 1)), generator=gen).to(x)
    delta = (x + noise / _l2(noise).clamp_min(1e-12) * radius).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (g,) = torch.autograd.grad(loss, [delta])
        delta = delta.detach() + step * g / _l2(g).clamp_min(1e-12)
        delta = delta * (epsilon / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)  # project onto the ball
        delta = (x + delta).clamp(0, 1) - x  # stay a valid image (shrinks the norm: still in the ball)
    return (x + delta).detach()


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
    adversarial: bool = False,
    epsilon: float = DEFAULT_EPSILON,
    pgd_steps: int = DEFAULT_PGD_STEPS,
    width: int | None = None,
) -> nn.Module:
    """Train a classifier on public images (N, C, H, W) in [0, 1] with Adam; returns it in eval mode.

    Augmentation: shifts of ±H/8 px, random σ ∈ [0, ``noise_std``] Gaussian noise (reconstructions are
    noisy), and horizontal flips for colour images (``flip=None``) — digits are not mirror-symmetric.

    ``adversarial=True``: PGD adversarial training (Madry et al. 2018) on top of that augmentation:
    each augmented batch is replaced by its :func:`pgd_l2` adversary (L2 ball of radius ``epsilon``,
    ``pgd_steps`` steps, crafted in eval mode). L2 rather than L∞: Santurkar et al. (2019) and
    Engstrom et al. (2019) obtain perceptually aligned gradients (usable for image synthesis) from
    L2-robust models; L∞ robustness favours sparse, blocky perturbations. The attack has its own
    generator, so batches and augmentations are those of standard training with the same seed.
    Costs ``pgd_steps + 1`` forward/backward passes per step. ``adversarial=False`` is the standard
    training, unchanged.
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
    if adversarial and not (epsilon > 0 and pgd_steps >= 1):
        raise ConfigError(f"adversarial training needs epsilon > 0 and pgd_steps ≥ 1; got {epsilon}, {pgd_steps}")
    factory = AUX_ARCHS.get(arch)
    shape = tuple(images.shape[1:])
    flip = shape[0] == 3 if flip is None else flip
    max_shift = max(1, shape[1] // 8)
    images = images.float()

    with torch.random.fork_rng(devices=[]):
        model = factory(shape, num_classes, seed, width=width)
        gen = torch.Generator().manual_seed(seed)
        attack_gen = torch.Generator().manual_seed(seed + 1) if adversarial else None
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
            if adversarial:
                model.eval()
                x = pgd_l2(model, x, labels[idx], epsilon, pgd_steps, gen=attack_gen)
                model.train()
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def train_public_classifier(public_images: Tensor, public_labels: Tensor, num_classes: int,
                            steps: int = 300, seed: int = 0, **train_kwargs) -> nn.Module:
    """The classifier guide's model, trained on the attacker's PUBLIC split (never the victim batch).

    Delegates to :func:`train_aux_classifier` (noise-augmented small CNN; ``adversarial=True`` for PGD
    training). :func:`gradleak.vision.cache.cached_classifier` also caches it on disk.
    """
    return train_aux_classifier(public_images, public_labels, num_classes, steps=steps, seed=seed, **train_kwargs)


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of ``model`` on labelled images."""
    pred = model(images.float()).argmax(dim=1)
    return float((pred == torch.as_tensor(labels)).float().mean())


def robust_accuracy(model: nn.Module, images: Tensor, labels: Tensor, epsilon: float = DEFAULT_EPSILON,
                    steps: int = DEFAULT_PGD_STEPS, seed: int = 0, chunk: int = 256) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on the :func:`pgd_l2` adversaries of labelled images."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    try:
        for start in range(0, images.shape[0], chunk):
            x, y = images[start : start + chunk].float(), labels[start : start + chunk]
            x_adv = pgd_l2(model, x, y, epsilon, steps, gen=gen)
            with torch.no_grad():
                correct += int((model(x_adv).argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return correct / max(1, images.shape[0])
