"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """The real CIFAR-10 subset (official layout): $GRADLEAK_CIFAR10_DIR, else ../shared/data."""
    env = os.environ.get("GRADLEAK_CIFAR10_DIR")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "cifar-10-batches-py"
    if not (path / "batches.meta").is_file():
        pytest.skip(
            f"real CIFAR-10 folder not found at {path}; "
            "set GRADLEAK_CIFAR10_DIR to a cifar-10-batches-py folder"
        )
    return path
