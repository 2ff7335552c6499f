"""The one dataset type every stage takes: images in [0, 1] plus the victim's normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..errors import ConfigError, DataError, is_int_at_least

SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image set held in memory.

    ``images`` are float32 ``N×C×H×W`` pixel values in [0, 1] (what an attacker reconstructs and
    metrics compare); the victim model sees ``(x − mean) / std`` with the fixed per-dataset
    constants ``mean``/``std``.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.float32:
            raise DataError(
                f"{self.name} images must be float32 N×C×H×W, got {self.images.dtype} "
                f"of shape {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            raise DataError(f"{self.name} labels must be a 1-D int64 tensor, got {self.labels.dtype} "
                            f"of shape {tuple(self.labels.shape)}")
        if len(self.labels) != len(self.images):
            raise DataError(f"{self.name} has {len(self.images)} images but {len(self.labels)} labels")
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"{self.name} has {channels} channels but mean/std of length "
                            f"{len(self.mean)}/{len(self.std)}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def sample_batch(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``batch_size`` distinct examples drawn uniformly: ``(images, labels, indices)``.

        Labels come as drawn, so a class may repeat (as in a real client's batch); the same
        generator state gives the same batch.
        """
        if not is_int_at_least(batch_size, 1):
            raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
        if batch_size > len(self):
            raise ConfigError(
                f"batch size {batch_size} is larger than the {len(self)} images in "
                f"{self.name} {self.split}"
            )
        indices = torch.randperm(len(self), generator=generator)[:batch_size]
        return self.images[indices], self.labels[indices], indices


class DatasetLoader(Protocol):
    """What a dataset registry entry is: split and data source in, ImageDataset out."""

    def __call__(self, split: str, data_dir: Path | None, download: bool) -> ImageDataset: ...


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return split
