"""Flower's own privacy features as the demo names them, and what a curious server still observes.

No Flower import here (the Flower wiring is :mod:`gradleak.integrations.flower_privacy`). Flower
1.41 ships, and the demo switches on by name (``--flower-dp SPEC``, ``--flower-secagg SPEC``):

- ``client-fixed:C=c,sigma=z``: central DP with client-side fixed clipping (McMahan et al. 2018,
  "Learning Differentially Private Recurrent Language Models"; Andrew et al. 2021): each client's
  ``fixedclipping_mod`` scales its update to ‖Δ‖₂ ≤ C before sending it; the server strategy
  ``DifferentialPrivacyClientSideFixedClipping`` adds N(0, (z·C/N)²) to the *aggregate*. The server
  receives every clipped reply: it sees Δ·min(1, C/‖Δ‖), direction intact.
- ``server-fixed:C=c,sigma=z``: the same with clipping on the server
  (``DifferentialPrivacyServerSideFixedClipping``): the server clips the replies it has already
  received, so a curious server sees every raw reply.
- ``local:C=c,epsilon=e,delta=d,sensitivity=s``: Flower's ``LocalDpMod``: the client clips to C and
  adds N(0, σ²) to every weight, σ = s·√(2 ln(1.25/δ))/ε (Dwork & Roth 2014, Gaussian mechanism).
- ``secagg+[:shares=f,threshold=f,max_weight=w,clip=r]``: SecAgg+ (Bell et al. 2020, "Secure
  Single-Server Aggregation with (Poly)Logarithmic Overhead"): ``SecAggPlusWorkflow`` and
  ``secaggplus_mod``; the server learns only Σ wᵢθ'ᵢ / Σ wᵢ of the N clients' quantised weights
  (wᵢ = num-examples / max_weight, weights clipped to ±clip and quantised to 2²² levels), i.e. for
  FedSGD the gradient of all N·B images at once. The eavesdropper then attacks that aggregate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from ..defenses.base import Param
from ..errors import ConfigError
from ..registry import Registry
from .capture import CapturedUpdate, GroundTruth


@dataclass(frozen=True)
class Feature:
    """One Flower privacy feature: its parameters and the Flower API that implements it."""

    name: str
    params: dict[str, Param] = field(default_factory=dict)
    flower: str = ""


FLOWER_DP: Registry[Feature] = Registry("Flower DP feature (--flower-dp)")
FLOWER_SECAGG: Registry[Feature] = Registry("Flower secure aggregation (--flower-secagg)")
_CENTRAL = {"C": Param(float, low=0.0), "sigma": Param(float, default=1.0, low=0.0, low_open=False)}
for _f in (
    Feature("none"),
    Feature("client-fixed", _CENTRAL, "fixedclipping_mod + DifferentialPrivacyClientSideFixedClipping"),
    Feature("server-fixed", _CENTRAL, "DifferentialPrivacyServerSideFixedClipping"),
    Feature("local", {"C": Param(float, low=0.0), "epsilon": Param(float, low=0.0),
                      "delta": Param(float, default=1e-5, low=0.0, high=1.0, high_open=True),
                      "sensitivity": Param(float, default=1.0, low=0.0, low_open=False)}, "LocalDpMod"),
):
    FLOWER_DP.add(_f.name, _f)
for _f in (
    Feature("none"),
    # Shares and threshold as fractions of the sampled clients, as SecAggPlusWorkflow takes floats;
    # max_weight and clip are Flower's defaults.
    Feature("secagg+", {"shares": Param(float, default=1.0, low=0.0, high=1.0),
                        "threshold": Param(float, default=0.5, low=0.0, high=1.0),
                        "max_weight": Param(float, default=1000.0, low=0.0),
                        "clip": Param(float, default=8.0, low=0.0)},
            "SecAggPlusWorkflow + secaggplus_mod (legacy strategy API)"),
):
    FLOWER_SECAGG.add(_f.name, _f)


def parse_feature(registry: Registry[Feature], spec: str) -> tuple[str, dict[str, float]]:
    """``"client-fixed:C=0.5"`` → ``("client-fixed", {"C": 0.5, "sigma": 1.0})``, one-line errors."""
    name, _, rest = str(spec).strip().partition(":")
    feature = registry.get(name.strip())
    given: dict[str, float] = {}
    for item in rest.split(",") if rest.strip() else []:
        key, eq, text = (s.strip() for s in item.partition("="))
        if not eq or key not in feature.params:
            takes = ", ".join(feature.params) or "no parameters"
            raise ConfigError(f"{registry.kind}: {item.strip()!r} is not key=value with a key it takes ({takes})")
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{registry.kind} {feature.name}: {key} must be a number, got {text!r}") from None
        p = feature.params[key]
        if not math.isfinite(value) or not p.ok(value):
            raise ConfigError(f"{registry.kind} {feature.name}: {key} must be {p.rule()}, got {text}")
        given[key] = value
    missing = [k for k, p in feature.params.items() if p.default is None and k not in given]
    if missing:
        raise ConfigError(f"{registry.kind} {feature.name} needs {', '.join(missing)} "
                          f"(e.g. {feature.name}:{','.join(f'{k}=1' for k in missing)})")
    return feature.name, {k: float(given.get(k, p.default)) for k, p in feature.params.items()}


@dataclass(frozen=True)
class FlowerPrivacy:
    """The Flower privacy features a run switches on (``none`` for each: plain FedAvg)."""

    dp: str = "none"
    dp_params: Mapping[str, float] = field(default_factory=dict)
    secagg: str = "none"
    secagg_params: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, dp: str = "none", secagg: str = "none") -> "FlowerPrivacy":
        dp_name, dp_params = parse_feature(FLOWER_DP, dp or "none")
        sa_name, sa_params = parse_feature(FLOWER_SECAGG, secagg or "none")
        if dp_name != "none" and sa_name != "none":
            # Flower's SecAgg+ runs only in the legacy strategy API, where the demo has no DP wrappers.
            raise ConfigError(f"--flower-dp {dp_name} with --flower-secagg {sa_name}: the demo runs one of them at "
                              f"a time (SecAgg+ needs Flower's legacy strategy API)")
        return cls(dp_name, dp_params, sa_name, sa_params)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "FlowerPrivacy":
        return cls.parse(str(run_config.get("flower-dp") or "none"), str(run_config.get("flower-secagg") or "none"))

    @property
    def aggregate_only(self) -> bool:
        """Whether the server never holds one client's reply (secure aggregation)."""
        return self.secagg != "none"

    def local_noise_std(self) -> float:
        """σ of LocalDpMod's Gaussian noise: s·√(2 ln(1.25/δ))/ε (Flower's formula)."""
        p = self.dp_params
        return p["sensitivity"] * math.sqrt(2 * math.log(1.25 / p["delta"])) / p["epsilon"]

    def observed(self, clients: int) -> str:
        """What the honest-but-curious server observes of a client's training reply."""
        p = self.dp_params
        if self.aggregate_only:
            return f"aggregate of {clients} clients"
        if self.dp == "client-fixed":
            return f"individual reply, clipped by the client to ‖Δ‖ ≤ {p['C']:g}"
        if self.dp == "local":
            return f"individual reply, clipped to {p['C']:g} and noised (σ={self.local_noise_std():.3g}) by the client"
        if self.dp == "server-fixed":
            return "individual reply, raw (the server clips and noises it only after receiving it)"
        return "individual reply"

    def describe(self) -> str:
        """One line for the report: the features on, and the Flower API behind each."""
        parts = []
        for registry, name, params in ((FLOWER_DP, self.dp, self.dp_params),
                                       (FLOWER_SECAGG, self.secagg, self.secagg_params)):
            if name != "none":
                args = ",".join(f"{k}={v:g}" for k, v in params.items())
                parts.append(f"{name}:{args} ({registry.get(name).flower})")
        return "; ".join(parts) or "none"


@dataclass
class MembersGroundTruth:
    """The evaluator's truth for a capture: one client's batch, or, for an aggregate over
    ``capture.members``, all their batches concatenated (scoring is order-free)."""

    inner: GroundTruth

    def __call__(self, capture: CapturedUpdate) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not capture.members:
            return self.inner(capture)
        parts = [self.inner(replace(capture, node_id=n, members=())) for n in capture.members]
        if any(p is None for p in parts):
            return None
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


__all__ = ["FLOWER_DP", "FLOWER_SECAGG", "Feature", "FlowerPrivacy", "MembersGroundTruth", "parse_feature"]
