"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or fill the user's cache (trained classifiers, downloads)."""
    previous = os.environ.get("GRADLEAK_CACHE")
    os.environ["GRADLEAK_CACHE"] = str(tmp_path_factory.mktemp("gradleak-cache"))
    yield
    if previous is None:
        os.environ.pop("GRADLEAK_CACHE", None)
    else:
        os.environ["GRADLEAK_CACHE"] = previous


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread: on a shared 2-core machine a second intra-op thread
    mostly waits (measured 10–20× slower training under load). Use with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """The embedded digits test split."""
    from gradleak.data import load_dataset

    return load_dataset("digits", "test")


@pytest.fixture
def cli(capsys):
    """Run ``gradleak ARGS`` in this process: ``cli(args)`` → (exit status, stdout, stderr)."""
    from gradleak.cli import main

    def run(args):
        with pytest.raises(SystemExit) as exc:
            main(args)
            raise SystemExit(0)
        captured = capsys.readouterr()
        return exc.value.code, captured.out, captured.err

    return run


@pytest.fixture
def flower_task_identity(monkeypatch):
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    # Messages need a run identity, which Flower sets inside a real ServerApp / ClientApp process.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture
def example_app_task():
    """The shipped Flower app's ``task`` module (imported from its folder, as Flower would)."""
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parent.parent / "gradleak" / "integrations" / "flower_app")
    sys.path.insert(0, folder)
    try:
        import gradleak_flower_app.task as task
    finally:
        sys.path.remove(folder)
    return task
