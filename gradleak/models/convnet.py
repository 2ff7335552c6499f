"""Inverting Gradients' ConvNet (Geiping et al., NeurIPS 2020), width configurable."""

from __future__ import annotations

from torch import nn


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def _pool(size: int) -> tuple[nn.Module, int]:
    # MaxPool(3) as in the paper where the map is large enough; smaller inputs (digits 8×8) keep it.
    if size >= 9:
        return nn.MaxPool2d(3), size // 3
    return nn.Identity(), size


class ConvNet(nn.Module):
    """Eight conv–BN–ReLU blocks (widths w, 2w, 2w, 4w, 4w, 4w | 4w, 4w) with two 3×3 max-pools.

    Width 64 on 32×32×3 inputs gives ≈ 2.9 M parameters, the paper's configuration.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 64):
        super().__init__()
        w = width
        pool0, s = _pool(image_size)
        pool1, s = _pool(s)
        layers = (
            _block(in_channels, w) + _block(w, 2 * w) + _block(2 * w, 2 * w) + _block(2 * w, 4 * w)
            + _block(4 * w, 4 * w) + _block(4 * w, 4 * w) + [pool0]
            + _block(4 * w, 4 * w) + _block(4 * w, 4 * w) + [pool1]
        )
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(4 * w * s * s, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))
