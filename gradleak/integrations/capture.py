"""What the server captured from one training reply, and the evaluator's ground-truth files.

:class:`CapturedUpdate` is everything an honest-but-curious server holds after one node's
reply: the weights θ it sent, the weights θ' that came back, its own training config and the
reply's metrics. It saves to and loads from one ``.npz``.

Ground truth (for scoring, never for attacking): only a simulation knows the client's private
batch. Demo clients leave it with :func:`write_ground_truth` in a folder that
:class:`GroundTruthFolder` reads for the *evaluator*, after the attack has finished; the attack
function receives the captured weights and nothing else.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..io import atomic_path


@dataclass
class CapturedUpdate:
    """What the server holds after one node's training reply: θ sent, θ' returned, and metadata."""

    server_round: int
    node_id: int
    global_weights: dict[str, np.ndarray]
    client_weights: dict[str, np.ndarray]
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.server_round, self.node_id)

    def num_examples(self, key: str = "num-examples") -> int | None:
        value = self.metrics.get(key)
        return int(value) if value is not None else None

    def save(self, path: str | Path) -> Path:
        """Write the capture as one ``.npz`` (arrays) with its metadata as JSON inside, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"global/{k}": v for k, v in self.global_weights.items()}
        arrays.update({f"client/{k}": v for k, v in self.client_weights.items()})
        meta = {"server_round": self.server_round, "node_id": self.node_id, "train_config": self.train_config,
                "metrics": self.metrics, "order": list(self.global_weights)}
        with atomic_path(path) as tmp:
            np.savez(tmp, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CapturedUpdate":
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            order = meta["order"]
            return cls(meta["server_round"], meta["node_id"],
                       {k: data[f"global/{k}"] for k in order}, {k: data[f"client/{k}"] for k in order},
                       meta["train_config"], meta["metrics"])


def truth_path(folder: str | Path, server_round: int, node_id: int) -> Path:
    """Where the private batch of ``node_id`` in ``server_round`` is written."""
    return Path(folder) / f"round{int(server_round):03d}-node{int(node_id)}.npz"


def write_ground_truth(folder: str | Path, server_round: int, node_id: int,
                       images: torch.Tensor, labels: torch.Tensor) -> Path:
    """Demo clients only: leave the private batch where the evaluator (not the attacker) reads it."""
    path = truth_path(folder, server_round, node_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez(tmp, images=images.detach().cpu().numpy(), labels=labels.detach().cpu().numpy())
    return path


class GroundTruth(Protocol):
    def __call__(self, capture: CapturedUpdate) -> tuple[torch.Tensor, torch.Tensor] | None: ...


@dataclass
class GroundTruthFolder:
    """Reads the batch a demo client wrote with :func:`write_ground_truth` (None when absent)."""

    folder: Path
    wait_s: float = 5.0  # the client writes before replying; allow for a slow file system

    def __call__(self, capture: CapturedUpdate) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = truth_path(self.folder, capture.server_round, capture.node_id)
        deadline = time.monotonic() + self.wait_s
        while not path.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]).long()


__all__ = ["CapturedUpdate", "GroundTruth", "GroundTruthFolder", "truth_path", "write_ground_truth"]
