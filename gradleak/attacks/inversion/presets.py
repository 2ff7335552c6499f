"""Named attack presets with the papers' defaults (iterations scaled to a CPU budget)."""

from __future__ import annotations

from dataclasses import replace

from ...registry import Registry
from .invert import InversionConfig

PRESETS: Registry[InversionConfig] = Registry("attack preset")

# Inverting Gradients (Geiping et al. 2020): cosine + TV, signed Adam, decay at 3/8, 5/8, 7/8.
# TV 0.3 (breaching uses 0.2): on untrained ConvNet-16, 6 CIFAR-10 test images, 1000 iterations, mean
# SSIM / PSNR 0.14 / 13.8 dB with TV 0.05, 0.20 / 15.3 with 0.3, 0.22 / 15.3 with 1.0; PSNR rose on
# all six. Images under MIN_SIDE_FOR_TV pixels (digits) get no TV unless asked (studies/attack.py).
# Step 0.5, not the paper's 0.1: IG ran 4 800–24 000 iterations; within 1000 the larger first step
# gets further before the decays. Untrained, CIFAR-10, B = 1, 1000 iterations, SSIM / PSNR at 0.1 →
# 0.5: ConvNet-64 bird 0.41 / 12.0 → 0.67 / 15.0 (4000 iterations at 0.1: 0.62 / 13.9), frog
# 0.22 / 17.1 → 0.20 / 18.7; ConvNet-16, 6 images, mean 0.20 / 15.3 → 0.27 / 15.8. (1.0: 0.72, 0.30,
# 0.26 / 15.5.) Digits stay exact.
PRESETS.add("ig", InversionConfig(objective="cosine", regularizers={"tv": 0.3}, optimizer="adam",
                                  lr=0.5, signed=True, lr_decay=True, init="randn"))
# Deep Leakage from Gradients (Zhu et al. 2019): L2 matching, L-BFGS lr 1, no prior.
PRESETS.add("dlg", InversionConfig(objective="l2", regularizers={}, optimizer="lbfgs", lr=1.0,
                                   signed=False, lr_decay=False, init="uniform", iterations=100))


def preset(name: str, **overrides) -> InversionConfig:
    """A copy of preset ``name`` with ``overrides`` applied (None values are ignored)."""
    return replace(PRESETS.get(name), **{k: v for k, v in overrides.items() if v is not None})
