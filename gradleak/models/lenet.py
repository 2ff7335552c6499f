"""DLG's LeNet (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019): sigmoid, strided convs."""

from __future__ import annotations

from torch import nn


class LeNet(nn.Module):
    """Three 5×5 sigmoid convolutions (strides 2, 2, 1) and one linear layer, as in DLG
    (:func:`~gradleak.models.build_model` gives it DLG's initialisation by default)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 12):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(width, width, 5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        side = -(-(-(-image_size // 2)) // 2)  # two stride-2 convs with padding 2: ceil twice
        self.fc = nn.Linear(width * side * side, num_classes)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))
