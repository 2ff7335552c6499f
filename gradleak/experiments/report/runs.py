"""The done runs of a store as the report reads them, grouped into series and by batch size.

Runs are grouped into *series* by every config field that varies across the store except
``batch_size`` and ``seed``: a sweep over label methods gives one series per method, a sweep over
models one per model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ...metrics.intervals import Stat, stat
from ..runner import RUNS_DIR
from ..store import RunRecord

# Summary keys written by the semantic-labelling and guidance stages (when a run has them).
AGGREGATED_KEY = "semantic_accuracy_aggregated"
SEMANTIC_BASELINE_KEY = "semantic_random_baseline"
GUIDANCE_FIELDS = ("guidance", "guidance_mode")  # config field naming the mode: none | oracle | search | ...
GUIDANCE_MODE_KEY = "guidance_mode"  # summary key: the mode the run used
NO_GUIDANCE_SSIM_KEY = "ssim_no_guidance"  # summary key: the same run's SSIM without guidance
SERIES_EXCLUDED = {"batch_size", "seed"}


@dataclass
class Run:
    """A done run as the report sees it: config, metrics and its artefact folder."""

    id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    folder: Path

    @property
    def batch_size(self) -> int:
        return int(self.config["batch_size"])

    def value(self, key: str) -> float | None:
        """A finite numeric metric, or ``None``; a dict-valued one gives its ``order_free`` /
        ``accuracy`` entry."""
        value = self.metrics.get(key)
        if isinstance(value, dict):
            value = value.get("order_free", value.get("accuracy"))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)


def load_runs(out: Path, records: Sequence[RunRecord]) -> list[Run]:
    """The done runs among ``records``, each with its folder under ``out``."""
    return [Run(r.id, r.config, r.metrics, out / RUNS_DIR / r.id) for r in records if r.status == "done"]


def varying_fields(runs: Sequence[Run]) -> list[str]:
    """Config fields (except batch size and seed) that take more than one value across ``runs``."""
    keys = sorted({k for r in runs for k in r.config} - SERIES_EXCLUDED)
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


def series_label(run: Run, fields_: Sequence[str]) -> str:
    return ", ".join(f"{k}={run.config.get(k)}" for k in fields_) or "all runs"


def group_series(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by series label, labels sorted."""
    fields_ = varying_fields(runs)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(series_label(r, fields_), []).append(r)
    return dict(sorted(groups.items()))


def batch_stats(points: Iterable[tuple[int, float | None]]) -> dict[int, Stat]:
    """:class:`Stat` of the values at each batch size (sorted); sizes with no value are left out."""
    values: dict[int, list[float | None]] = {}
    for b, v in points:
        values.setdefault(b, []).append(v)
    out = {b: stat(values[b]) for b in sorted(values)}
    return {b: s for b, s in out.items() if s is not None}


def by_batch(runs: Sequence[Run], metric: Callable[[Run], float | None]) -> dict[int, Stat]:
    """:class:`Stat` of ``metric`` over the runs at each batch size."""
    return batch_stats((r.batch_size, metric(r)) for r in runs)


def guidance_mode(run: Run) -> str | None:
    """The guidance mode a run used (summary first, then config), ``None`` when it names none."""
    mode = run.metrics.get(GUIDANCE_MODE_KEY) or next(
        (run.config[f] for f in GUIDANCE_FIELDS if run.config.get(f) is not None), None)
    return None if mode is None else str(mode)


def unguided(runs: Sequence[Run]) -> list[Run]:
    """The runs without guidance (mode ``none`` or not named)."""
    return [r for r in runs if guidance_mode(r) in (None, "none")]


def guidance_points(runs: Sequence[Run]) -> list[tuple[str, Run, float]]:
    """(guidance mode, run, SSIM) from runs that varied the guidance field or recorded both SSIMs."""
    points = []
    for r in runs:
        mode = guidance_mode(r)
        ssim = r.value("ssim")
        if mode is not None and ssim is not None:
            points.append((str(mode), r, ssim))
        no_guidance = r.value(NO_GUIDANCE_SSIM_KEY)
        if no_guidance is not None and str(mode) != "none":
            points.append(("none", r, no_guidance))
    return points
