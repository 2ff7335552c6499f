"""scikit-learn's bundled handwritten digits: 1797 real 8×8 grey images, no download needed.

Source: the UCI optical recognition of handwritten digits test set, as shipped in
``sklearn.datasets.load_digits`` (pixel counts 0..16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .dataset import ImageDataset, check_split

# Population mean/std of every pixel of the train split below (a test recomputes them);
# fixed so that the victim's normalisation never depends on which split was loaded.
DIGITS_MEAN = (0.3051,)
DIGITS_STD = (0.3759,)
DIGITS_CLASS_NAMES = [str(d) for d in range(10)]


def digits_split_indices(split: str, total: int) -> np.ndarray:
    """Deterministic split: every fourth image (index % 4 == 0) is test, the rest train."""
    check_split(split)
    index = np.arange(total)
    return index[index % 4 == 0] if split == "test" else index[index % 4 != 0]


def load_digits_dataset(
    split: str = "test", data_dir: Path | None = None, download: bool = True
) -> ImageDataset:
    """The digits split as 1×8×8 images in [0, 1]; ``data_dir``/``download`` are unused."""
    from sklearn.datasets import load_digits  # sklearn import is slow; only pay for it here

    raw = load_digits()
    keep = digits_split_indices(split, len(raw.target))
    images = torch.from_numpy(raw.images[keep].astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(raw.target[keep].astype(np.int64))
    return ImageDataset(
        name="digits",
        split=split,
        images=images.contiguous(),
        labels=labels,
        class_names=list(DIGITS_CLASS_NAMES),
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
    )
