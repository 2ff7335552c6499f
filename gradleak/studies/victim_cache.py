"""Trained victims cached by content: a sweep trains each (architecture, seed, data, schedule) once.

Every run of a defence sweep builds the same trained victim for its seed; ConvNet-64 takes minutes
of CPU to train, so the weights are kept at ``cache_root()/victims/<hash>.safetensors`` (safetensors:
loading runs no code) and reused — the same tensors, bit for bit, as training them again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file, save_file
from torch import nn

from ..data.cifar10 import cache_root
from ..io import atomic_path
from ..vision.cache import data_digest


def victim_key(settings: dict[str, Any], images, labels) -> str:
    """sha256 of the JSON settings (architecture, seed, schedule) and the training data."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(data_digest(images, labels).encode())
    return h.hexdigest()[:24]


def victims_dir() -> Path:
    return cache_root() / "victims"


def cached_training(model: nn.Module, settings: dict[str, Any], images, labels,
                    train: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Load ``model``'s trained state from the cache, or ``train`` it and store the result."""
    path = victims_dir() / f"{victim_key(settings, images, labels)}.safetensors"
    if path.is_file():
        state = load_file(str(path))
        model.load_state_dict({k: v.to(model.state_dict()[k].device) for k, v in state.items()})
        return model
    train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"settings": json.dumps(settings, sort_keys=True, default=str)})
    return model
