"""Defences the honest client applies to its update, in order, as one registry.

``--defense NAME:key=value,…`` (repeatable) names them: ``clip:C=1``, ``client-dp:C=1,sigma=0.5``,
``dp-sgd:C=1,sigma=0.5[,delta=1e-5]``, ``prune:keep=0.1``, ``quantize:bits=4``, ``sign``, and
``secagg:N=4`` (listed last): secure aggregation changes what the server receives across clients,
not one client's update, so :mod:`gradleak.studies.client` simulates the N clients. Randomness
comes from a ``torch.Generator`` seeded from the run seed.
"""

from . import client_dp, clip, dp_sgd, prune, quantize, secagg  # noqa: F401  (each module registers its defence)
from .base import (DEFENSES, Defense, Param, apply_defenses, build_defenses, clip_to_norm, global_norm,
                   parse_defense, wrap_gradient)
from .dp_sgd import dp_epsilon
from .secagg import mean_updates, split_aggregate

__all__ = ["DEFENSES", "Defense", "Param", "apply_defenses", "build_defenses", "clip_to_norm", "dp_epsilon",
           "global_norm", "mean_updates", "parse_defense", "split_aggregate", "wrap_gradient"]
