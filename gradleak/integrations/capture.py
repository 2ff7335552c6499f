"""What the server captured from one training reply, and the evaluator's ground-truth files.

:class:`CapturedUpdate` is everything an honest-but-curious server holds after one node's
reply: the weights θ it sent, the weights θ' that came back, its own training config and the
reply's metrics. :meth:`CapturedUpdate.model_and_update` turns it into the global model and the
client's update Δ = θ' − θ; :func:`save_capture` writes both in gradleak's one recorded-update
format (:mod:`gradleak.threat.io`, safetensors: nothing is unpickled when it is read), with the
weights θ, so that ``gradleak attack --observed-update FILE`` replays it.

Ground truth (for scoring, never for attacking): only a simulation knows the client's private
batch. Demo clients leave it with :func:`write_ground_truth` in a folder that
:class:`GroundTruthFolder` reads for the *evaluator*, after the attack has finished; the attack
function receives the captured weights and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from ..io import atomic_path
from ..threat import ClientUpdate
from .weights import LocalSchedule, TaskSpec, load_weights, update_from_weights

if TYPE_CHECKING:
    from ..config import AttackConfig


@dataclass
class CapturedUpdate:
    """What the server holds after one node's training reply: θ sent, θ' returned, and metadata."""

    server_round: int
    node_id: int
    global_weights: dict[str, np.ndarray]
    client_weights: dict[str, np.ndarray]
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # What the server held: one client's reply, or (secure aggregation) the aggregate of ``members``.
    observed: str = "individual reply"
    members: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[int, int]:
        return (self.server_round, self.node_id)

    def num_examples(self, key: str = "num-examples") -> int | None:
        value = self.metrics.get(key)
        return int(value) if value is not None else None

    def examples_per_client(self) -> int | None:
        """B of one client: ``num-examples``, or under secure aggregation its share of the members' sum
        (what a schedule given in local epochs counts its mini-batches over)."""
        n = self.num_examples()
        return n // len(self.members) if n is not None and self.members else n

    def model_and_update(self, task: TaskSpec, schedule: LocalSchedule = LocalSchedule()
                         ) -> tuple[nn.Module, ClientUpdate]:
        """The global model with θ and the BN buffers the server sent (it knows both: it sent them),
        and the client's FedAvg update Δ = θ' − θ with the local schedule read from the server's own
        training config. Whether the attacker may use that schedule is the threat model's call."""
        model = load_weights(task.build_model(), self.global_weights, with_buffers=True)
        lr, steps, mb = schedule.read(self.train_config, self.examples_per_client())
        return model, update_from_weights(model, self.global_weights, self.client_weights, lr, steps, mb)


def capture_path(folder: str | Path, server_round: int, node_id: int) -> Path:
    """Where the capture of ``node_id`` in ``server_round`` is saved under ``folder``."""
    return Path(folder) / f"round{int(server_round):03d}-node{int(node_id)}.safetensors"


def capture_facts(capture: CapturedUpdate, task: TaskSpec, client_mode: str) -> dict[str, Any]:
    """The task facts a saved capture carries beside the fingerprint (those ``gradleak attack`` writes,
    plus where the capture came from)."""
    return {"dataset": task.dataset, "model": task.model, "width": task.width, "input_shape": list(task.input_shape),
            "num_classes": task.num_classes, "batch_size": capture.num_examples(), "client_mode": client_mode,
            "mean": list(task.mean) if task.mean is not None else None,
            "std": list(task.std) if task.std is not None else None,
            "class_names": list(task.class_names) or None,
            "server_round": capture.server_round, "node_id": capture.node_id}


def save_capture(path: str | Path, capture: CapturedUpdate, task: TaskSpec, cfg: "AttackConfig",
                 schedule: LocalSchedule = LocalSchedule(),
                 truth: tuple[torch.Tensor, torch.Tensor] | None = None) -> Path:
    """Write ``capture`` as a recorded update (:func:`gradleak.threat.io.save_update`) with the global
    weights θ, so that it replays with ``gradleak attack --observed-update PATH --dataset D --model M``;
    ``truth`` (the evaluator's private batch) is stored too when given, so that the replay is scored."""
    from ..studies.client import set_client_mode
    from ..threat.io import save_update

    model, update = capture.model_and_update(task, schedule)
    set_client_mode(model, cfg.client.client_mode)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_update(path, update, model, facts=capture_facts(capture, task, cfg.client.client_mode),
                       truth=truth, with_weights=True)


def truth_path(folder: str | Path, server_round: int, node_id: int) -> Path:
    """Where the private batch of ``node_id`` in ``server_round`` is written."""
    return Path(folder) / f"round{int(server_round):03d}-node{int(node_id)}.safetensors"


def write_ground_truth(folder: str | Path, server_round: int, node_id: int,
                       images: torch.Tensor, labels: torch.Tensor) -> Path:
    """Demo clients only: leave the private batch where the evaluator (not the attacker) reads it."""
    from safetensors.torch import save_file

    path = truth_path(folder, server_round, node_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"images": images.detach().cpu().float().contiguous(),
               "labels": labels.detach().cpu().long().contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return path


def read_ground_truth(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The (images, labels) :func:`write_ground_truth` wrote to ``path``."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return tensors["images"], tensors["labels"].long()


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
        return read_ground_truth(path)


__all__ = ["CapturedUpdate", "GroundTruth", "GroundTruthFolder", "capture_facts", "capture_path", "read_ground_truth",
           "save_capture", "truth_path", "write_ground_truth"]
