"""CIFAR-10 from the official python layout (``cifar-10-batches-py``), with safe unpickling.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009. Each batch file is a
pickled dict with ``data`` (N×3072 uint8 rows, channel-major: 1024 red, 1024 green, 1024 blue
values of a 32×32 image) and ``labels`` (N ints); ``batches.meta`` holds ``label_names``.

Where the folder comes from, in order: an explicit ``data_dir`` (the folder itself or its
parent), the cache ``$GRADLEAK_CACHE/cifar-10-batches-py`` (default cache
``~/.cache/gradleak``), then, if allowed, a checked download of the official archive.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .dataset import ImageDataset, check_split
from .safe_pickle import load_restricted_pickle

FOLDER_NAME = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
ROW_LENGTH = 3 * 32 * 32
DIR_ENV = "GRADLEAK_CIFAR10_DIR"  # a cifar-10-batches-py folder (or its parent) used when no data_dir is given
_TRAIN_BATCH = re.compile(r"data_batch_(\d+)")


def cache_root() -> Path:
    """Where downloads go: ``$GRADLEAK_CACHE`` if set, else ``~/.cache/gradleak``."""
    env = os.environ.get("GRADLEAK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gradleak"


def _is_cifar_folder(path: Path) -> bool:
    return (path / "batches.meta").is_file()


def resolve_cifar10_dir(data_dir: str | Path | None, download: bool = True) -> Path:
    """The ``cifar-10-batches-py`` folder to read: ``data_dir``, else ``$GRADLEAK_CIFAR10_DIR``, else
    the cache (downloading into it if allowed)."""
    if data_dir is None and os.environ.get(DIR_ENV):
        data_dir = os.environ[DIR_ENV]
    if data_dir is not None:
        given = Path(data_dir).expanduser()
        for candidate in (given, given / FOLDER_NAME):
            if _is_cifar_folder(candidate):
                return candidate
        if not given.exists():
            raise DataError(f"CIFAR-10 folder {given} does not exist")
        raise DataError(
            f"{given} is not a {FOLDER_NAME} folder: no batches.meta in it or in {given / FOLDER_NAME}"
        )
    cached = cache_root() / FOLDER_NAME
    if _is_cifar_folder(cached):
        return cached
    if not download:
        raise DataError(
            f"CIFAR-10 not found: put the official {FOLDER_NAME} folder at {cached}, pass --data-dir or set {DIR_ENV}"
        )
    return download_cifar10(cache_root())


def fetch_url(url: str, dest: Path) -> None:
    """Stream ``url`` to ``dest`` with a progress bar (tests replace this to stay offline)."""
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10", leave=False) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract only regular files and folders that stay inside ``dest`` (no links, no ``..``)."""
    root = dest.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
                raise DataError(f"refusing to extract {archive.name}: entry {member.name!r} is a link "
                                "or escapes the target folder")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, members=members, filter="data")
        else:  # pragma: no cover - Python without the tarfile filter backport; checked above
            tar.extractall(root, members=members)


def download_cifar10(root: Path) -> Path:
    """Download, md5-check and extract the official archive into ``root/cifar-10-batches-py``."""
    target = root / FOLDER_NAME
    where = f"put the official {FOLDER_NAME} folder at {target} or pass --data-dir"
    try:
        root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=root))
    except OSError as e:
        raise DataError(f"cannot create the cache folder {root} ({e.strerror or e}); {where}") from None
    try:
        archive = workdir / "cifar-10-python.tar.gz"
        try:
            fetch_url(CIFAR10_URL, archive)
        except (OSError, http.client.HTTPException) as e:
            raise DataError(f"could not download CIFAR-10 ({e}); {where}") from None
        actual = _md5(archive)
        if actual != CIFAR10_MD5:
            raise DataError(f"downloaded CIFAR-10 archive has md5 {actual}, expected {CIFAR10_MD5}; {where}")
        try:
            _safe_extract(archive, workdir)
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot extract the CIFAR-10 archive ({e}); {where}") from None
        extracted = workdir / FOLDER_NAME
        if not _is_cifar_folder(extracted):
            raise DataError(f"the CIFAR-10 archive holds no {FOLDER_NAME}/batches.meta; {where}")
        if target.exists():  # a partial copy from an earlier run: replace it
            shutil.rmtree(target)
        extracted.rename(target)
        return target
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    # Official batches were pickled by Python 2, so keys arrive as bytes; re-saved ones may be str.
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_class_names(folder: Path) -> list[str]:
    path = folder / "batches.meta"
    if not path.is_file():
        raise DataError(f"{path} is missing; {folder} is not a {FOLDER_NAME} folder")
    meta = _str_keys(load_restricted_pickle(path), path)
    names = meta.get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path} has no list of label_names")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (N×3072 uint8 rows, N int64 labels), checked."""
    batch = _str_keys(load_restricted_pickle(path), path)
    for key in ("data", "labels"):
        if key not in batch:
            raise DataError(f"{path} has no {key!r} entry (found: {', '.join(sorted(batch)) or 'nothing'})")
    data, labels = batch["data"], batch["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' must be a 2-D uint8 array, got {type(data).__name__} "
                        f"{getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".rstrip())
    if data.shape[1] != ROW_LENGTH:
        raise DataError(f"{path}: rows have {data.shape[1]} values, expected {ROW_LENGTH} (3×32×32)")
    is_int = (int, np.integer)
    if not isinstance(labels, (list, np.ndarray)) or not all(isinstance(v, is_int) for v in labels):
        raise DataError(f"{path}: 'labels' must be a list of ints")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise DataError(f"{path} has {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    return data, labels


def batch_files(folder: Path, split: str) -> list[Path]:
    """``test_batch`` for test; every ``data_batch_<n>`` present, in numeric order, for train."""
    if split == "test":
        path = folder / "test_batch"
        if not path.is_file():
            raise DataError(f"{path} is missing")
        return [path]
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _TRAIN_BATCH.fullmatch(p.name)) and p.is_file()
    ]
    if not found:
        raise DataError(f"{folder} has no data_batch_* files for the train split")
    return [p for _, p in sorted(found)]


def read_cifar10_folder(folder: Path, split: str) -> ImageDataset:
    """Read one split of a ``cifar-10-batches-py`` folder into an ImageDataset."""
    check_split(split)
    class_names = read_class_names(folder)
    parts = [read_batch(p, len(class_names)) for p in batch_files(folder, split)]
    data = np.concatenate([d for d, _ in parts]) if len(parts) > 1 else np.ascontiguousarray(parts[0][0])
    labels = np.concatenate([y for _, y in parts])
    if not data.flags.writeable:  # torch warns on read-only buffers
        data = data.copy()
    images = torch.from_numpy(data).view(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    return ImageDataset(
        name="cifar10",
        split=split,
        images=images,
        labels=torch.from_numpy(labels),
        class_names=class_names,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )


def load_cifar10_dataset(
    split: str = "test", data_dir: str | Path | None = None, download: bool = True
) -> ImageDataset:
    """CIFAR-10 ``split`` as 3×32×32 images in [0, 1]; see the module docstring for the source."""
    check_split(split)
    return read_cifar10_folder(resolve_cifar10_dir(data_dir, download), split)
