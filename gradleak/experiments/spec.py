"""Experiment files: a YAML grid over :class:`~gradleak.config.AttackConfig` options → a list of jobs.

An experiment file holds ``name:`` (optional), ``base:`` (fields every run shares) and ``grid:``
(field → list of values); the jobs are the cartesian product of the grid over the base::

    name: batch-size-sweep
    base: {dataset: digits, model: lenet, iterations: 300, tv: 0.0}
    grid: {batch_size: [1, 2, 4, 8], seed: [0, 1]}

``grid`` may also be a list of such mappings: each sub-grid is expanded over the base and the runs
are pooled (a run two sub-grids share runs once). An optional ``utility: {rounds, clients, seeds}``
asks the sweep for the FedAvg utility of each defence setting (:mod:`gradleak.experiments.utility`). ``base`` may nest options by section (``inversion: {iterations: 300}``). A relative ``data_dir`` is
resolved against the YAML file's folder; without one, CIFAR-10 is read from ``--data-dir`` or
``$GRADLEAK_CIFAR10_DIR``. Every grid point is validated (option names, types, ranges, registered
names, files) before anything runs, so a typo fails in a second instead of after hours of sweeping.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import OPTIONS, AttackConfig, canonical, flatten
from ..config_files import read_yaml_mapping
from ..errors import ConfigError
from ..studies.checks import check_inputs

TOP_LEVEL_KEYS = ("name", "base", "grid", "utility")


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
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]]  # one grid, or sub-grids whose jobs are pooled
    jobs: list[Job]
    source: Path | None = None
    utility: dict[str, Any] | None = None  # the FedAvg utility budget (see gradleak.experiments.utility)


def canonical_json(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)


def identity(cfg: AttackConfig) -> dict[str, Any]:
    """The options that make a run what it is: those that differ from the defaults (flat view)."""
    values = canonical(cfg).to_dict()
    defaults = canonical(AttackConfig()).to_dict()
    return {k: v for k, v in values.items() if canonical_json({"v": v}) != canonical_json({"v": defaults[k]})}


def job_id(cfg: AttackConfig) -> str:
    """A short, stable id: the first 12 hex digits of SHA-256 over the canonical JSON (sorted keys)
    of the config's non-default options.

    Two configs share an id exactly when they describe the same run. Leaving defaults out keeps
    the ids of an existing store valid when a later version adds an option (with a default that
    keeps the old behaviour), or nests the options in sections, so a resumed sweep does not rerun
    everything.
    """
    return hashlib.sha256(canonical_json(identity(cfg)).encode()).hexdigest()[:12]


def _normalise_keys(section: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in section.items()}


def expand_grid(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[AttackConfig]:
    """The cartesian product of ``grid`` over ``base``, in the order the grid lists its options;
    every point is validated (one-line error naming the grid point) before anything runs."""
    keys = list(grid)
    configs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        try:
            configs.append(check_inputs(AttackConfig.from_dict({**base, **point}, check=False)))
        except ConfigError as exc:
            where = ", ".join(f"{k}={v!r}" for k, v in point.items())
            raise ConfigError(f"grid point {where}: {exc}" if point else str(exc)) from None
    return configs


def build_experiment(data: dict[str, Any], source: Path | None = None, name: str | None = None,
                     overrides: dict[str, Any] | None = None) -> Experiment:
    """Parse an experiment mapping (as loaded from YAML) into validated jobs; ``overrides`` (e.g. the
    CLI's ``--data-dir``) replace base options."""
    if not isinstance(data, dict):
        raise ConfigError("an experiment must be a mapping with base: and grid:")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown experiment key(s): {', '.join(unknown)} (expected {', '.join(TOP_LEVEL_KEYS)})")
    base = flatten(data.get("base") or {}, "base")
    raw = data.get("grid") or {}
    listed = isinstance(raw, list)
    grids = [_normalise_keys(g, f"grid[{i}]" if listed else "grid") for i, g in enumerate(raw if listed else [raw])]
    for key, value in (overrides or {}).items():
        if any(key in grid for grid in grids):
            raise ConfigError(f"{key} is a grid axis of this experiment; it cannot be overridden")
        base[key] = value
    for grid in grids:
        _check_grid(base, grid)
    if source is not None and isinstance(base.get("data_dir"), str):
        data_dir = Path(base["data_dir"]).expanduser()
        if not data_dir.is_absolute():
            base["data_dir"] = str((source.parent / data_dir).resolve())
    jobs: dict[str, Job] = {}
    for grid in grids:
        configs = expand_grid(base, grid)
        ids = [job_id(cfg) for cfg in configs]
        if len(set(ids)) != len(ids):
            raise ConfigError("the grid lists the same run twice (e.g. 0 and 0.0 for a float option)")
        for run_id, cfg in zip(ids, configs):  # sub-grids may share runs: each runs once
            jobs.setdefault(run_id, Job(run_id, canonical(cfg)))
    title = str(data.get("name") or name or (source.stem if source else "experiment"))
    utility = data.get("utility")
    if utility is not None:
        from ..studies.utility import UtilityBudget

        utility = UtilityBudget.parse(utility).to_dict()  # one-line errors before anything runs
    return Experiment(title, base, grids if listed else grids[0], list(jobs.values()), source, utility)


def _check_grid(base: dict[str, Any], grid: dict[str, Any]) -> None:
    bad = sorted(set(grid) - set(OPTIONS))
    if bad:
        raise ConfigError(f"unknown attack option(s) in experiment grid: {', '.join(bad)}")
    both = sorted(set(base) & set(grid))
    if both:
        raise ConfigError(f"option(s) both in base and grid: {', '.join(both)}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values")
        if len({canonical_json({"v": v}) for v in values}) != len(values):
            raise ConfigError(f"grid.{key} lists a value twice")


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    raw = read_yaml_mapping(path, "experiment file", "a mapping with base: and grid:", empty_ok=False)
    return build_experiment(raw, source=path.resolve(), overrides=overrides)
