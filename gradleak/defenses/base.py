"""The defence interface: ``NAME:key=value,…`` specs, their checks, and composition in order.

A defence acts at one of three stages of the client's computation:

- ``update``: on the finished update (the FedSGD gradient or the FedAvg weight delta);
- ``step``: inside each local step, on the per-example gradients (DP-SGD needs them), so it wraps
  the function that computes a mini-batch's gradient;
- ``aggregate``: across clients (``secagg``: the server sees only the aggregate of N clients'
  updates); ``apply_defenses`` skips it and :mod:`gradleak.studies.client` simulates the clients.

Step defences therefore act before any update defence; a list that puts one after an update
defence is refused rather than silently reordered. An aggregate defence comes last (at most one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch

from ..errors import ConfigError
from ..registry import Registry

Tensors = list[torch.Tensor]
GradientFn = Callable[[torch.Tensor, torch.Tensor], Tensors]  # (x, y) → mean-loss gradient per parameter


@dataclass(frozen=True)
class Param:
    """One parameter of a defence: its type, default (None: required) and admitted range."""

    kind: type  # float or int
    default: float | int | None = None
    low: float | None = None
    low_open: bool = True  # low is excluded
    high: float | None = None
    high_open: bool = False

    def rule(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '≥'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '≤'} {self.high:g}")
        return " and ".join(parts)

    def ok(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return not (self.high is not None and (v >= self.high if self.high_open else v > self.high))


class Defense:
    """Base class: subclasses set ``name``, ``stage``, ``params`` and implement ``apply`` or ``wrap``."""

    name: ClassVar[str]
    stage: ClassVar[str] = "update"
    params: ClassVar[dict[str, Param]] = {}

    def __init__(self, **values: Any):
        self.values = dict(values)

    def apply(self, tensors: Tensors, generator: torch.Generator) -> Tensors:
        """The defended update (``update`` stage)."""
        raise NotImplementedError(f"{self.name} acts per step")

    def wrap(self, gradient: GradientFn, generator: torch.Generator) -> GradientFn:
        """A gradient function that defends each step's mini-batch gradient (``step`` stage)."""
        raise NotImplementedError(f"{self.name} acts on the finished update")

    def record(self, *, sample_rate: float, steps: int) -> dict[str, Any]:
        """What result.json says the client applied; ``sample_rate``/``steps`` serve privacy accounting."""
        return {"name": self.name, **self.values}

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.values.items())})"


DEFENSES: Registry[type[Defense]] = Registry("defense")


def _number(name: str, key: str, text: str, p: Param) -> float | int:
    try:
        v = float(text)
    except ValueError:
        raise ConfigError(f"defense {name}: {key} must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"defense {name}: {key} must be finite, got {text!r}")
    if p.kind is int:
        if not v.is_integer():
            raise ConfigError(f"defense {name}: {key} must be an integer, got {text!r}")
        v = int(v)
    if not p.ok(v):
        raise ConfigError(f"defense {name}: {key} must be {p.rule()}, got {text}")
    return v


def parse_defense(spec: str) -> tuple[str, dict[str, float | int]]:
    """``"dp-sgd:C=1,sigma=0.5"`` → ``("dp-sgd", {"C": 1.0, "sigma": 0.5, "delta": 1e-05})``: the
    registered name and every parameter (defaults filled in), checked with one-line errors."""
    if not isinstance(spec, str):
        raise ConfigError(f"a defense is NAME or NAME:key=value,…, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    cls = DEFENSES.get(name)
    given: dict[str, float | int] = {}
    for item in rest.split(",") if rest.strip() else []:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"defense {name}: {item.strip()!r} is not key=value (e.g. {_example(cls)})")
        if key not in cls.params:
            takes = ", ".join(cls.params) or "no parameters"
            raise ConfigError(f"defense {name}: unknown parameter {key!r}; it takes {takes}")
        if key in given:
            raise ConfigError(f"defense {name}: {key} given twice")
        given[key] = _number(name, key, text.strip(), cls.params[key])
    missing = [k for k, p in cls.params.items() if p.default is None and k not in given]
    if missing:
        raise ConfigError(f"defense {name}: needs {', '.join(missing)} (e.g. {_example(cls)})")
    return name, {k: given.get(k, p.default) for k, p in cls.params.items()}


def _example(cls: type[Defense]) -> str:
    required = [k for k, p in cls.params.items() if p.default is None]
    return cls.name + (":" + ",".join(f"{k}=1" for k in required) if required else "")


def build_defenses(specs: Sequence[str]) -> list[Defense]:
    """The defences ``specs`` name, in order; step defences must come first, and at most one of them
    (two per-example transforms of the same gradients have no standard meaning)."""
    built = []
    for spec in specs:
        name, params = parse_defense(spec)
        built.append(DEFENSES.get(name)(**params))
    steps = [d for d in built if d.stage == "step"]
    if len(steps) > 1:
        raise ConfigError(f"defense: at most one per-example defense, got {', '.join(d.name for d in steps)}")
    aggregates = [i for i, d in enumerate(built) if d.stage == "aggregate"]
    if len(aggregates) > 1:
        raise ConfigError(f"defense: at most one aggregation, got {', '.join(built[i].name for i in aggregates)}")
    if aggregates and aggregates[0] != len(built) - 1:
        d = built[aggregates[0]]
        raise ConfigError(f"defense {d.name} aggregates the clients' finished updates: list it last, after "
                          f"{', '.join(x.name for x in built[aggregates[0] + 1:])}")
    seen_update = None
    for d in built:
        if d.stage == "update":
            seen_update = seen_update or d
        elif d.stage == "step" and seen_update is not None:  # it acts inside the local steps, before the update exists
            raise ConfigError(f"defense {d.name} acts on each step's per-example gradients, before the update "
                              f"exists: list it before {seen_update.name}")
    return built


def apply_defenses(defenses: Sequence[Defense | str], tensors: Tensors, generator: torch.Generator) -> Tensors:
    """The update after every ``update``-stage defence of ``defenses``, in order (an ``aggregate``
    one acts across clients, not here)."""
    if all(isinstance(d, str) for d in defenses):
        defenses = build_defenses(defenses)
    for d in defenses:
        if d.stage == "update":
            tensors = d.apply(tensors, generator)
    return tensors


def wrap_gradient(defenses: Sequence[Defense], gradient: GradientFn, generator: torch.Generator) -> GradientFn:
    """``gradient`` with every ``step``-stage defence of ``defenses`` applied, in order."""
    for d in defenses:
        if d.stage == "step":
            gradient = d.wrap(gradient, generator)
    return gradient


def gaussian_like(tensors: Tensors, std: float, generator: torch.Generator) -> Tensors:
    """Independent N(0, std²) per coordinate, drawn on the CPU from ``generator`` (device-independent
    and reproducible from the run seed), then moved to each tensor's device."""
    return [torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) * std for t in tensors]


def global_norm(tensors: Tensors) -> torch.Tensor:
    return torch.sqrt(sum((t.detach().double() ** 2).sum() for t in tensors))


def clip_to_norm(tensors: Tensors, C: float) -> Tensors:
    """``v / max(1, ‖v‖₂ / C)`` over all tensors together (one norm for the whole update)."""
    norm = float(global_norm(tensors))
    scale = min(1.0, C / norm) if norm > 0 else 1.0
    return [t * scale for t in tensors]
