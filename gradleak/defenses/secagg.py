"""Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS): the server learns only the sum of N clients' updates, never one of them.

It acts across clients, not on one client's update, so its stage is ``aggregate``:
:func:`~gradleak.defenses.apply_defenses` skips it and :mod:`gradleak.studies.client` simulates the
N clients (each with its own private batch and the defences listed before ``secagg``) and hands
the server their mean — the revealed sum divided by N, as FedAvg's server does. For FedSGD that is
the gradient of the mean loss over all N·B examples. ``secagg`` must be the last defence listed.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import DEFENSES, Defense, GradientFn, Param, Tensors


@DEFENSES.register("secagg")
class SecAgg(Defense):
    """The server sees the mean of ``N`` clients' updates (``N = 1``: no aggregation)."""

    name = "secagg"
    stage = "aggregate"
    params = {"N": Param(int, low=1, low_open=False)}

    def apply(self, tensors: Tensors, generator: torch.Generator) -> Tensors:
        raise NotImplementedError("secagg acts across clients: gradleak.studies.client aggregates them")

    def wrap(self, gradient: GradientFn, generator: torch.Generator) -> GradientFn:
        raise NotImplementedError("secagg acts across clients: gradleak.studies.client aggregates them")


def split_aggregate(defenses: Sequence[Defense]) -> tuple[list[Defense], Defense | None]:
    """(the defences each client applies, the aggregation or None); build_defenses puts it last."""
    per_client = [d for d in defenses if d.stage != "aggregate"]
    aggregate = [d for d in defenses if d.stage == "aggregate"]
    return per_client, (aggregate[0] if aggregate else None)


def mean_updates(parts: Sequence[Tensors]) -> Tensors:
    """The per-parameter mean of several clients' updates: ``(Δ_1 + … + Δ_N) / N``."""
    n = len(parts)
    return [sum(ts) / n for ts in zip(*parts)]
