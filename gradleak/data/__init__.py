"""Datasets by name: ``load_dataset("digits" | "cifar10", split)`` → :class:`ImageDataset`."""

from __future__ import annotations

from pathlib import Path

from ..registry import Registry
from .cifar10 import load_cifar10_dataset
from .dataset import SPLITS, DatasetLoader, ImageDataset, check_split
from .digits import load_digits_dataset

DATASETS: Registry[DatasetLoader] = Registry("dataset")
DATASETS.add("digits", load_digits_dataset)
DATASETS.add("cifar10", load_cifar10_dataset)


def load_dataset(
    name: str, split: str = "test", data_dir: str | Path | None = None, download: bool = True
) -> ImageDataset:
    """Load ``split`` ("train" | "test") of dataset ``name``.

    ``data_dir`` points at local files where the dataset needs them (CIFAR-10: the
    ``cifar-10-batches-py`` folder or its parent); ``download`` allows fetching into the cache.
    """
    loader = DATASETS.get(name)
    check_split(split)
    return loader(split, Path(data_dir).expanduser() if data_dir is not None else None, download)


__all__ = ["DATASETS", "SPLITS", "ImageDataset", "load_dataset"]
