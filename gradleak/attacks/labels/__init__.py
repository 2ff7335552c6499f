"""Analytic label recovery from a client update (ALGORITHMS.md, "Label recovery from gradients").

One module per strategy, each a function ``(Observation, AuxData | None) -> LabelEstimate``
registered in :data:`LABEL_STRATEGIES`: ``idlg``, ``yin``, ``llg``, ``llg+``, ``llg*``, ``geng``,
``ilrg`` and ``ilrg-dummy`` (the default: the most accurate on untrained LeNet, ConvNet and
ResNet-18 in benchmarks/label_recovery.py).

FedAvg: strategies read ``obs.gradient()``, i.e. ``−Δ / (K η)``, the mean of the K local
gradients. The FedSGD identities then hold only for the average over a drifting local model, and
once the client fits its batch (p → y) the bias gradient carries almost no count information.
Scale-dependent strategies (all but idlg and yin) also need the local schedule
(``ThreatModel.knows_local_schedule``). Measured with benchmarks/label_recovery.py, untrained
LeNet on digits, full-batch local steps, 10 batches each, mean order-free accuracy of the default
(random baseline 0.47 / 0.60 / 0.79 at B = 8 / 16 / 64)::

    local steps K, lr η      B = 8    B = 16   B = 64
    K = 1  (= FedSGD)        1.000    1.000    1.000
    K = 5,  η = 0.01         1.000    1.000    0.981
    K = 10, η = 0.01         1.000    1.000    0.928
    K = 5,  η = 0.1          0.887    0.775    0.798
    K = 10, η = 0.1          0.787    0.725    0.700   (below the random baseline at B = 64)

BatchNorm models degrade faster (ConvNet width 16 on digits, B = 64, 5 batches, ``gradleak labels``:
0.978 at K = 1, 0.747 at K = 5, η = 0.1 and 0.834 at K = 10, η = 0.01, against a random baseline of
0.80); every strategy is near the baseline there. On CIFAR-10 the same LeNet (DLG's ±0.5 init,
large gradients) drifts further: K = 5, η = 0.01 gives 0.74 / 0.73 / 0.63 at B = 8 / 16 / 64 (random 0.44 / 0.58 /
0.80; 20 batches each, ``gradleak labels --update fedavg --local-steps 5 --local-lr 0.01
--batch-sizes 8 16 64 --trials 20``), and geng and ilrg fail even at B = 1.

Trained victims leak less: LeNet after 500 SGD steps on CIFAR-10 (``--trained-steps 500
--batch-sizes 8 16 32 64 128 --trials 40``) gives 0.975 / 0.914 / 0.876 / 0.874 / 0.875 at B = 8 / 16 /
32 / 64 / 128 with the default (random 0.436 / 0.589 / 0.710 / 0.792 / 0.857); the dummies no longer
show how a fitted model's predictions spread over the batch. The numbers above were measured with
the current decoding (:func:`~gradleak.attacks.labels.ilrg.count_covariance`); those below, with
rounding, except where marked. ResNet-18 after the same training: 0.800 / 0.794 / 0.834 / 0.881 /
0.908 at B = 8 / 16 / 32 / 64 / 128 (random 0.436 / 0.584 / 0.719 / 0.796 / 0.852), where ``llg*`` does better at every B ≥ 8 (0.838 / 0.856 / 0.859 /
0.889 / 0.916). ConvNet-64 after the same training: 0.975 at B = 4, then 0.750 / 0.731 / 0.744 / 0.753 /
0.784 at B = 8 … 128, below the random baseline from B = 64 on, as is every strategy there.

With a trained victim, ``--label-aux public`` hands ``ilrg-dummy`` the images the victim was trained
on. On LeNet that helps (0.997 / 0.930 / 0.951 at B = 8 / 32 / 128, current decoding); on ResNet-18, which fits those
images far more closely, it falls below the random baseline from B = 32 on (0.525 / 0.358 / 0.233 at
B = 32 / 64 / 128), while ``llg+`` holds 0.853 / 0.886 / 0.892. ConvNet-64 does the same
(0.684 / 0.666 / 0.573), while there the public images lift ``geng`` and ``llg+`` above the random
baseline at B = 64 and 128 (geng 0.870 / 0.896, llg+ 0.847 / 0.882), which every strategy falls below
with dummies. Give ``ilrg-dummy`` images the model was not trained on.
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
from .base import LABEL_STRATEGIES, AuxData, LabelEstimate, round_counts

DEFAULT_METHOD = "ilrg-dummy"


def recover_labels(observation: Observation, method: str = DEFAULT_METHOD, aux: Optional[AuxData] = None) -> LabelEstimate:
    """Recover the label multiset of the observed batch with the named strategy."""
    return LABEL_STRATEGIES.get(method)(observation, aux)


__all__ = ["DEFAULT_METHOD", "LABEL_STRATEGIES", "AuxData", "LabelEstimate", "recover_labels", "round_counts"]
