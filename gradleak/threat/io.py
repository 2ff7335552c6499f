"""Recorded updates: one file format for ``--save-update``, Flower captures and ``--observed-update``.

A recorded update is a safetensors file (tensors only: nothing is unpickled when it is read) with

- ``update.<i>``: the update's tensors, in ``model.named_parameters()`` order;
- ``bn.<i>.mean`` / ``bn.<i>.var``: the client batch's BN statistics, when known;
- ``weights.<name>``: the global weights θ the update was computed against, when stored (Flower
  captures store them, so a later round's update can be replayed);
- ``truth.images`` / ``truth.labels``: the private batch, only when the user chooses to store it
  (an evaluator's file, never an attacker's);
- metadata ``gradleak``: JSON with the format version, the update's kind and schedule, the model
  fingerprint (architecture and a digest of θ) and the facts the threat model works with
  (input shape, number of classes, batch size, normalisation, class names), and the client's
  defence record when it applied any (names and parameters; what ``knows_defense`` grants).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UpdateError
from ..models import weights_fingerprint
from ..io import atomic_path
from .update import ClientUpdate

FORMAT = "gradleak-update"
VERSION = 1


@dataclass
class RecordedUpdate:
    """What a recorded-update file holds."""

    update: ClientUpdate
    fingerprint: str
    architecture: str
    facts: dict[str, Any] = field(default_factory=dict)  # input_shape, num_classes, batch_size, mean, std, ...
    weights: dict[str, torch.Tensor] | None = None
    truth: tuple[torch.Tensor, torch.Tensor] | None = None  # (images in [0, 1], labels)

    def check_model(self, model: nn.Module, path: str | Path = "the recorded update") -> None:
        """Refuse a model whose weights are not the ones the update was computed against."""
        mine = weights_fingerprint(model)
        if mine != self.fingerprint:
            raise UpdateError(
                f"{path} was recorded against other weights ({self.architecture}, fingerprint "
                f"{self.fingerprint[:12]}) than this model's ({type(model).__name__}, {mine[:12]}); use the "
                f"model, width, init, seed and trained steps it was recorded with")

    def degenerate(self) -> str | None:
        """Why the update carries (almost) no information, or None."""
        norm = torch.sqrt(sum((t.double() ** 2).sum() for t in self.update.tensors))
        if norm == 0:
            return "the update is all zeros: there is nothing to attack"
        if norm < 1e-12:
            return f"the update's norm is {norm:.1e}: it carries almost no signal"
        return None


def save_update(path: str | Path, update: ClientUpdate, model: nn.Module, facts: dict[str, Any] | None = None,
                truth: tuple[torch.Tensor, torch.Tensor] | None = None, with_weights: bool = False) -> Path:
    """Write ``update`` (computed against ``model``'s weights) to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors = {f"update.{i}": t.detach().cpu().contiguous() for i, t in enumerate(update.tensors)}
    for i, (mean, var) in enumerate(update.bn_stats or []):
        tensors[f"bn.{i}.mean"], tensors[f"bn.{i}.var"] = mean.detach().cpu(), var.detach().cpu()
    if with_weights:
        tensors.update({f"weights.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
                        if isinstance(v, torch.Tensor)})
    if truth is not None:
        tensors["truth.images"] = truth[0].detach().cpu().float().contiguous()
        tensors["truth.labels"] = truth[1].detach().cpu().long().contiguous()
    meta = {
        "format": FORMAT, "version": VERSION, "kind": update.kind, "names": list(update.names),
        "local_steps": update.local_steps, "lr": update.lr, "local_batch_size": update.local_batch_size,
        "architecture": type(model).__name__, "fingerprint": weights_fingerprint(model), "facts": facts or {},
        "defenses": update.defenses,  # the client's defence record (names, parameters), for knows_defense
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"gradleak": json.dumps(meta)})
    return Path(path)


def load_update(path: str | Path) -> RecordedUpdate:
    """Read a file written by :func:`save_update`; a missing, unreadable or foreign file is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise UpdateError(f"observed update file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta_text = (fh.metadata() or {}).get("gradleak")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UpdateError(f"{path} is not a gradleak update file (a safetensors file from --save-update): "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        meta = json.loads(meta_text or "")
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UpdateError(f"{path} is a safetensors file but not a gradleak update (no gradleak metadata)")
    if meta.get("version") != VERSION:
        raise UpdateError(f"{path} has update format version {meta.get('version')}; this gradleak reads {VERSION}")
    kind = meta.get("kind")
    if kind not in ("fedsgd", "fedavg"):
        raise UpdateError(f"{path}: unknown update kind {kind!r}")
    lr = meta.get("lr")
    if kind == "fedavg" and lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise UpdateError(f"{path}: a FedAvg update needs a positive local learning rate, the file says {lr!r}")
    names = list(meta.get("names") or [])
    n = sum(1 for k in tensors if k.startswith("update."))
    if len(names) != n:
        raise UpdateError(f"{path}: {n} update tensors but {len(names)} names")
    bn = []
    while f"bn.{len(bn)}.mean" in tensors:
        bn.append((tensors[f"bn.{len(bn)}.mean"], tensors[f"bn.{len(bn)}.var"]))
    update = ClientUpdate(kind, names, [tensors[f"update.{i}"] for i in range(n)], int(meta.get("local_steps") or 1),
                          lr, meta.get("local_batch_size"), bn or None)
    record = meta.get("defenses")
    update.defenses = ([dict(d) for d in record if isinstance(d, dict)] or None) if isinstance(record, list) else None
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")} or None
    truth = (tensors["truth.images"], tensors["truth.labels"]) if "truth.images" in tensors else None
    return RecordedUpdate(update, str(meta.get("fingerprint", "")), str(meta.get("architecture", "?")),
                          dict(meta.get("facts") or {}), weights, truth)
