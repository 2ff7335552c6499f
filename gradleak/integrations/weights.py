"""From a federation's weight arrays to the client update an attack reads (no Flower needed).

The server sees a client's update as the weight delta Δ = θ' − θ between the global weights θ
it sent and the weights θ' the client returned (a FedAvg update). With one local SGD step on
the whole batch it is FedSGD: −Δ/η is then exactly the batch gradient (Zhu et al. 2019, "Deep
Leakage from Gradients"). The local schedule (η, steps) is read from the training config the
server itself sent (:class:`LocalSchedule`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UpdateError
from ..threat import ClientUpdate


@dataclass(frozen=True)
class TaskSpec:
    """What the server knows about the task: the architecture, the input format and the classes."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    class_names: tuple[str, ...] = ()
    width: int | None = None
    dataset: str | None = None  # the registered dataset, when the task is one (recorded in saved captures)

    @classmethod
    def from_dataset(cls, dataset: str, model: str, width: int | None = None,
                     data_dir: str | None = None) -> "TaskSpec":
        """The task of ``model`` trained on ``dataset`` (shape, classes and normalisation)."""
        from ..data import load_dataset

        data = load_dataset(dataset, "test", data_dir)
        return cls(model, data.input_shape, data.num_classes, data.mean, data.std,
                   tuple(data.class_names), width, dataset)

    def build_model(self) -> nn.Module:
        from ..models import build_model

        return build_model(self.model, self.input_shape, self.num_classes, self.width)


Weights = Mapping[str, Any] | Sequence[Any]


def named_state(model: nn.Module, weights: Weights) -> dict[str, torch.Tensor]:
    """Name a federation's arrays after ``model.state_dict()`` entries.

    Arrays keyed by state-dict name (``ArrayRecord(model.state_dict())``) keep their names;
    unnamed ones (``ArrayRecord(list_of_ndarrays)`` keys "0", "1", …) are matched by position,
    to the full state dict or, when there are exactly as many, to the parameters only.
    """
    state_names = list(model.state_dict().keys())
    param_names = [n for n, _ in model.named_parameters()]
    if isinstance(weights, Mapping):
        if set(param_names) <= set(weights):
            return {k: _as_tensor(v) for k, v in weights.items() if k in state_names}
        values = list(weights.values())
    else:
        values = list(weights)
    for names in (state_names, param_names):
        if len(values) == len(names):
            return {n: _as_tensor(v) for n, v in zip(names, values)}
    raise UpdateError(
        f"got {len(values)} arrays but the model has {len(state_names)} state entries and "
        f"{len(param_names)} parameters; the model does not match the federation's"
    )


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.from_numpy(np.array(value, copy=True))


def update_from_weights(
    model: nn.Module,
    global_weights: Weights,
    client_weights: Weights,
    lr: float | None = None,
    local_steps: int = 1,
    local_batch_size: int | None = None,
) -> ClientUpdate:
    """The client's update Δ = θ' − θ, one tensor per ``model.named_parameters()`` entry.

    Buffers (BN running statistics, counters) are not parameters and are left out. The update
    is a FedAvg update with the given schedule; with ``local_steps=1`` on the whole batch,
    ``update.as_gradient()`` = −Δ/η is the client's FedSGD gradient.
    """
    sent, back = named_state(model, global_weights), named_state(model, client_weights)
    names, deltas = [], []
    for name, p in model.named_parameters():
        if name not in sent or name not in back:
            raise UpdateError(f"parameter {name!r} is missing from the federation's arrays")
        # float64 difference: θ' and θ are close, so float32 subtraction would lose digits of Δ.
        delta = back[name].double() - sent[name].double()
        names.append(name)
        deltas.append(delta.to(p.dtype))
    update = ClientUpdate("fedavg", names, deltas, int(local_steps), lr, local_batch_size)
    update.validate(model)
    return update


def load_weights(model: nn.Module, weights: Weights, with_buffers: bool) -> nn.Module:
    """Load θ into ``model``: parameters always, buffers (BN statistics) only when asked."""
    state = named_state(model, weights)
    params = {n for n, _ in model.named_parameters()}
    keep = {k: v for k, v in state.items() if with_buffers or k in params}
    missing = params - set(keep)
    if missing:
        raise UpdateError(f"parameter(s) {', '.join(sorted(missing))} missing from the global weights")
    current = model.state_dict()
    for k, v in keep.items():
        current[k] = v.to(current[k].dtype).reshape(current[k].shape)
    model.load_state_dict(current)
    return model


@dataclass
class LocalSchedule:
    """Where the server reads the client's local schedule: the training config it sent.

    The keys are the ones the server's own ``train_config`` uses; absent keys fall back to the
    defaults here (``lr=None``: unknown, the update is then read as −Δ, right up to scale). A
    config that gives local epochs E instead of steps (with local mini-batch b over the reply's
    ``num-examples`` B) means K = E·⌈B/b⌉ steps: the ordinary epoch loop, mini-batches in the
    batch's order in the first epoch and reshuffled (by the client, unseen) in later ones, which is
    :func:`~gradleak.threat.simulate_client`'s order when b divides B.
    """

    lr_key: str = "lr"
    steps_key: str = "local-steps"
    batch_key: str = "local-batch-size"
    epochs_key: str = "local-epochs"
    lr: float | None = None
    local_steps: int = 1

    def read(self, train_config: Mapping[str, Any], num_examples: int | None = None
             ) -> tuple[float | None, int, int | None]:
        """``(lr, local steps K, local mini-batch or None)``; steps win over epochs when both are given."""
        lr = train_config.get(self.lr_key, self.lr)
        mb = train_config.get(self.batch_key)
        mb = int(mb) if mb else None
        steps = train_config.get(self.steps_key)
        epochs = train_config.get(self.epochs_key)
        if steps is None and epochs and num_examples:
            steps = local_steps_of_epochs(int(epochs), int(num_examples), mb)
        return (float(lr) if lr is not None else None), int(steps if steps is not None else self.local_steps), mb


def local_steps_of_epochs(epochs: int, num_examples: int, local_batch_size: int | None) -> int:
    """K = E·⌈B/b⌉: the SGD steps of ``epochs`` passes over ``num_examples`` in mini-batches of
    ``local_batch_size`` (None: the whole batch, one step per epoch)."""
    mb = local_batch_size or num_examples
    return int(epochs) * -(-int(num_examples) // int(mb))


__all__ = ["LocalSchedule", "TaskSpec", "Weights", "load_weights", "local_steps_of_epochs", "named_state",
           "update_from_weights"]
