"""Analytic label recovery from a client update (docs/ALGORITHMS.md, "Label recovery from
gradients").

One module per strategy, each a function ``(Observation, AuxData | None) -> LabelEstimate``
registered in :data:`LABEL_STRATEGIES`: ``idlg``, ``yin``, ``llg``, ``llg+``, ``llg*``, ``geng``,
``ilrg``, ``ilrg-dummy`` (the default: the most accurate on untrained LeNet, ConvNet and
ResNet-18 in benchmarks/label_recovery.py) and ``rlu`` (FedAvg: simulates the K local steps).

FedAvg: strategies read ``obs.gradient()``, i.e. ``−Δ / (K η)``, the mean of the K local
gradients. The FedSGD identities then hold only for the average over a drifting local model, and
once the client fits its batch (p → y) the bias gradient carries almost no count information.
Scale-dependent strategies (all but idlg and yin) also need the local schedule
(``ThreatModel.knows_local_schedule``). Trained victims leak less, and ``ilrg-dummy`` should be
given public images the model was not trained on. Measurements: docs/labels.md.
"""

from __future__ import annotations

from typing import Optional

from ...threat import Observation
# importing a strategy module registers it; this order is the listing order (simplest first)
from . import idlg  # noqa: F401  isort: skip
from . import yin  # noqa: F401  isort: skip
from . import llg  # noqa: F401  isort: skip
from . import geng  # noqa: F401  isort: skip
from . import ilrg  # noqa: F401  isort: skip
from . import ilrg_dummy  # noqa: F401  isort: skip
from . import rlu  # noqa: F401  isort: skip
from .base import LABEL_STRATEGIES, AuxData, LabelEstimate, round_counts

DEFAULT_METHOD = "ilrg-dummy"


def recover_labels(observation: Observation, method: str = DEFAULT_METHOD, aux: Optional[AuxData] = None) -> LabelEstimate:
    """Recover the label multiset of the observed batch with the named strategy (on the update with a
    known clip undone, when the threat model grants the defence record: :mod:`.unclip`)."""
    if observation.defenses:
        from .unclip import undo_clip

        observation = undo_clip(observation, aux)
    return LABEL_STRATEGIES.get(method)(observation, aux)


__all__ = ["DEFAULT_METHOD", "LABEL_STRATEGIES", "AuxData", "LabelEstimate", "recover_labels", "round_counts"]
