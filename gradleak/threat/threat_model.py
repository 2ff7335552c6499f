"""The threat model: exactly what the honest-but-curious server is granted, and nothing more."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from .update import ClientUpdate


@dataclass
class ThreatModel:
    """What the attacker knows beyond the update, the architecture and the weights θ.

    Every piece of side knowledge is an explicit flag (docs/ALGORITHMS.md, "Threat model").
    """

    knows_batch_size: bool = True
    knows_labels: bool = False
    knows_bn_stats: bool = False  # the BN statistics of the client's batch (clients returning BN buffers)
    knows_class_names: bool = True
    knows_local_schedule: bool = True  # FedAvg: the client's lr and number of local steps
    # The client's defences and their parameters (ClientUpdate.defenses): names, C, σ, keep, bits,
    # ε — never the noise draws or the pruning mask (a pruned update shows its zeros anyway).
    knows_defense: bool = False

    def observe(
        self,
        model: nn.Module,
        update: ClientUpdate,
        input_shape: Sequence[int],
        num_classes: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_size: int | None = None,
        labels: torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
    ) -> "Observation":
        """Hand the attacker what this threat model grants; everything else is withheld."""
        update.validate(model)
        # A recorded update arrives on the CPU: the attack runs where the model is.
        update = update.to(next((p.device for p in model.parameters()), torch.device("cpu")))
        # The server sent θ and the BN buffers itself, and the client's train/eval mode is part of
        # the shared training code: the attacker's copy computes exactly the client's function.
        attacker_model = copy.deepcopy(model)
        batch_stats = update.bn_stats if self.knows_bn_stats else None
        update_defenses = update.defenses
        if not self.knows_local_schedule and update.kind == "fedavg":
            update = ClientUpdate(update.kind, list(update.names), list(update.tensors), 1, None, None)
        else:
            update = ClientUpdate(update.kind, list(update.names), list(update.tensors), update.local_steps,
                                  update.lr, update.local_batch_size)
        return Observation(
            model=attacker_model,
            update=update,
            input_shape=tuple(int(s) for s in input_shape),
            num_classes=int(num_classes),
            mean=tuple(mean) if mean is not None else None,
            std=tuple(std) if std is not None else None,
            batch_size=batch_size if self.knows_batch_size else None,
            labels=labels.clone() if (self.knows_labels and labels is not None) else None,
            class_names=list(class_names) if (self.knows_class_names and class_names is not None) else None,
            bn_stats=batch_stats,
            defenses=copy.deepcopy(update_defenses) if self.knows_defense and update_defenses else None,
        )


@dataclass
class Observation:
    """Everything an attack may use. Built by :meth:`ThreatModel.observe`; never holds the private batch.

    ``model`` carries θ and the BN buffers the server sent, in the client's train/eval mode.
    ``bn_stats`` holds the client batch's BN statistics only when granted. Images live in pixel
    space [0, 1]; the model sees ``(x − mean) / std``.
    """

    model: nn.Module
    update: ClientUpdate
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    batch_size: int | None = None
    labels: torch.Tensor | None = None
    class_names: list[str] | None = None
    bn_stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    defenses: list[dict] | None = None  # the client's defence record, only when granted (knows_defense)

    @property
    def device(self) -> torch.device:
        """Where the observed model lives (and the attack on it runs)."""
        return next((p.device for p in self.model.parameters()), torch.device("cpu"))

    def to(self, device: str | torch.device) -> "Observation":
        """This observation with its model and tensors on ``device`` (itself when already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        bn = None if self.bn_stats is None else [(m.to(device), v.to(device)) for m, v in self.bn_stats]
        return replace(self, model=copy.deepcopy(self.model).to(device), update=self.update.to(device),
                       labels=None if self.labels is None else self.labels.to(device), bn_stats=bn)

    def gradient(self) -> list[torch.Tensor]:
        """The observed update read as a gradient (see :meth:`ClientUpdate.as_gradient`)."""
        return self.update.as_gradient()

    def named_gradient(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.update.names, self.gradient()))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        from ..models import normalize_input

        return normalize_input(x, self.mean, self.std)

    def require_batch_size(self) -> int:
        if self.batch_size is None:
            from ..errors import ConfigError

            raise ConfigError("this attack needs the batch size, which the threat model does not grant")
        return self.batch_size
