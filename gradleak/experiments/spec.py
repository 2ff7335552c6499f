"""Experiment files: a YAML grid over :class:`~gradleak.pipeline.AttackConfig` fields → a list of jobs.

An experiment file holds ``name:`` (optional), ``base:`` (fields every run shares) and ``grid:``
(field → list of values); the jobs are the cartesian product of the grid over the base::

    name: batch-size-sweep
    base: {dataset: digits, model: lenet, iterations: 300, tv: 0.0}
    grid: {batch_size: [1, 2, 4, 8], seed: [0, 1]}

A relative ``data_dir`` is resolved against the YAML file's folder, so a shipped experiment works
from any working directory. Every job is validated (field names, value types, registered names)
before anything runs, so a typo fails in a second instead of after hours of sweeping.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

from ..config_files import read_yaml_mapping
from ..errors import ConfigError
from ..pipeline import AttackConfig

TOP_LEVEL_KEYS = ("name", "base", "grid")


@dataclass(frozen=True)
class Job:
    """One run of a sweep: its config and the id derived from it."""

    id: str
    config: AttackConfig


@dataclass
class Experiment:
    """A parsed experiment file: the grid that varies and the jobs it expands to."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    jobs: list[Job]
    source: Path | None = None


def canonical_json(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _type_hints(cls: type = AttackConfig) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that only resolves under TYPE_CHECKING: skip type handling
        return {}


def canonical_config(cfg: AttackConfig) -> AttackConfig:
    """``cfg`` with whole numbers in float fields as floats, so ``tv: 0`` and ``tv: 0.0`` are one run."""
    hints = _type_hints(type(cfg))
    changes = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        allowed = _allowed_types(hints.get(f.name)) or ()
        if float in allowed and int not in allowed and isinstance(value, int) and not isinstance(value, bool):
            changes[f.name] = float(value)
    return replace(cfg, **changes) if changes else cfg


def identity(cfg: AttackConfig) -> dict[str, Any]:
    """The fields that make a run what it is: those that differ from the config's defaults."""
    values = canonical_config(cfg).to_dict()
    defaults = canonical_config(type(cfg)()).to_dict()
    return {k: v for k, v in values.items() if canonical_json({"v": v}) != canonical_json({"v": defaults[k]})}


def job_id(cfg: AttackConfig) -> str:
    """A short, stable id: the first 12 hex digits of SHA-256 over the canonical JSON (sorted keys)
    of the config's non-default fields.

    Two configs share an id exactly when they describe the same run. Leaving defaults out keeps
    the ids of an existing store valid when a later version adds an option (with a default that
    keeps the old behaviour), so a resumed sweep does not rerun everything.
    """
    return hashlib.sha256(canonical_json(identity(cfg)).encode()).hexdigest()[:12]


def _normalise_keys(section: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in section.items()}


def _registries() -> dict[str, Callable[[], Any]]:
    """Fields whose value must be a registered name (imported lazily: the registries pull in torch)."""

    def datasets():
        from ..data import DATASETS
        return DATASETS

    def models():
        from ..models import MODELS
        return MODELS

    def inits():
        from ..models import INITS
        return INITS

    def attacks():
        from ..attacks.inversion import PRESETS
        return PRESETS

    def label_strategies():
        from ..attacks.labels import LABEL_STRATEGIES
        return LABEL_STRATEGIES

    return {"dataset": datasets, "model": models, "init": inits, "attack": attacks, "labels": label_strategies}


# Values that are not registry names but are valid for the field anyway.
SPECIAL_NAMES = {"labels": {"auto"}}


def _allowed_types(annotation: Any) -> tuple[type, ...] | None:
    """The runtime types an annotation admits (None when it is not a plain scalar type we check)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        parts = typing.get_args(annotation)
    else:
        parts = (annotation,)
    out: list[type] = []
    for part in parts:
        if part is type(None):
            out.append(type(None))
        elif part in (int, float, str, bool):
            out.append(part)
        else:
            return None
    return tuple(out)


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int subclass; a YAML `yes` for batch_size is a mistake
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, tuple(t for t in allowed if t is not bool))


def validate_config(cfg: AttackConfig) -> None:
    """Check value types and registered names of one config (ConfigError on the first problem)."""
    hints = _type_hints()
    for f in fields(AttackConfig):
        value = getattr(cfg, f.name)
        allowed = _allowed_types(hints.get(f.name))
        if allowed is not None and not _type_ok(value, allowed):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"option {f.name} must be {names}, got {value!r}")
    for name, registry in _registries().items():
        value = getattr(cfg, name, None)
        if value is not None and value not in SPECIAL_NAMES.get(name, ()):
            registry().get(value)  # raises ConfigError listing the choices


def expand_grid(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[AttackConfig]:
    """The cartesian product of ``grid`` over ``base``, in the order the grid lists its fields."""
    keys = list(grid)
    configs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        configs.append(AttackConfig.from_dict({**base, **dict(zip(keys, values))}))
    return configs


def build_experiment(data: dict[str, Any], source: Path | None = None, name: str | None = None) -> Experiment:
    """Parse an experiment mapping (as loaded from YAML) into validated jobs."""
    if not isinstance(data, dict):
        raise ConfigError("an experiment must be a mapping with base: and grid:")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown experiment key(s): {', '.join(unknown)} (expected {', '.join(TOP_LEVEL_KEYS)})")
    base = _normalise_keys(data.get("base") or {}, "base")
    grid = _normalise_keys(data.get("grid") or {}, "grid")
    known = {f.name for f in fields(AttackConfig)}
    bad = sorted((set(base) | set(grid)) - known)
    if bad:
        raise ConfigError(f"unknown attack option(s) in experiment: {', '.join(bad)}")
    both = sorted(set(base) & set(grid))
    if both:
        raise ConfigError(f"option(s) both in base and grid: {', '.join(both)}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values")
        if len({canonical_json({"v": v}) for v in values}) != len(values):
            raise ConfigError(f"grid.{key} lists a value twice")
    if source is not None and isinstance(base.get("data_dir"), str):
        data_dir = Path(base["data_dir"]).expanduser()
        if not data_dir.is_absolute():
            base["data_dir"] = str((source.parent / data_dir).resolve())
    configs = expand_grid(base, grid)
    for cfg in configs:
        validate_config(cfg)
    jobs = [Job(job_id(cfg), canonical_config(cfg)) for cfg in configs]
    if len({job.id for job in jobs}) != len(jobs):
        raise ConfigError("the grid lists the same run twice (e.g. 0 and 0.0 for a float option)")
    title = str(data.get("name") or name or (source.stem if source else "experiment"))
    return Experiment(title, base, grid, jobs, source)


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    raw = read_yaml_mapping(path, "experiment file", "a mapping with base: and grid:", empty_ok=False)
    return build_experiment(raw, source=path.resolve())
