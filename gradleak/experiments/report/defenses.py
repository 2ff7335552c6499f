""""Where attacks stop": leakage against each defence's strength and utility, and the weakest
setting at which each leakage measure is indistinguishable from its random baseline.

A run's defence is its ``defense`` list (``dp-sgd:C=1,sigma=0.5`` …); runs whose lists name the same
defences form one *defence* whose *strength* is the parameter that varies among them (σ for DP,
C for clipping, keep for pruning, bits for quantisation, N for secure aggregation), ordered weakest
first (:data:`STRONGER`). Runs are compared within a *context*: every config field that varies
except the seed and the defence (dataset, model, B, …); the undefended runs of a context are its
reference.

Leakage measures and their random baselines (what an attack that learned nothing scores), both
recorded per run:

* label accuracy (``label_accuracy``) vs ``label_random_baseline`` (B uniform guesses);
* naming accuracy (``semantic_accuracy``, the labeller's top-1 on the reconstructions) vs
  ``semantic_random_baseline``;
* SSIM / PSNR (``ssim``, ``psnr``) vs ``ssim_random_baseline`` / ``psnr_random_baseline``: the
  inversion's own random starting images scored against the batch under the same matching
  (:func:`gradleak.studies.evaluate.uninformative_image_baseline`).

Rule: at one setting, the excess ``measure − baseline`` of each run is averaged over the runs
(seeds) with a 95% percentile-bootstrap interval; the measure is *indistinguishable* from random
when the interval reaches 0 or below (``low ≤ 0``), and not judged with fewer than 2 runs. The
weakest such setting is reported, or "none in the range"; a stronger setting that leaks again is
named beside it.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ...defenses import parse_defense
from ...metrics.intervals import Estimate, mean_interval
from ...studies.utility import UTILITY_OPTIONS
from ..utility import load_utilities
from .runs import SEMANTIC_BASELINE_KEY, Run
from .verdicts import MIN_UNITS

# (name, metric key, baseline keys in order of preference)
MEASURES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("label accuracy", "label_accuracy", ("label_random_baseline",)),
    ("naming accuracy", "semantic_accuracy", (SEMANTIC_BASELINE_KEY, "label_random_baseline")),
    ("SSIM", "ssim", ("ssim_random_baseline",)),
    ("PSNR", "psnr", ("psnr_random_baseline",)),
)
# (defence, parameter) → +1 when a larger value is stronger, −1 when a smaller one is.
STRONGER = {("dp-sgd", "sigma"): 1, ("client-dp", "sigma"): 1, ("secagg", "N"): 1, ("dp-sgd", "C"): -1,
            ("client-dp", "C"): -1, ("clip", "C"): -1, ("prune", "keep"): -1, ("quantize", "bits"): -1}
NOT_CONTEXT = {"seed", "defense"}
NONE_IN_RANGE = "none in the range"
UNDEFENDED = "none"


@dataclass
class Cell:
    """One measure at one setting: the excess over the baseline with its interval, or why not."""

    mean: float | None = None
    baseline: float | None = None
    excess: Estimate | None = None
    why: str = ""

    @property
    def indistinguishable(self) -> bool | None:
        if self.excess is None or min(self.excess.n) < MIN_UNITS:
            return None
        return self.excess.low <= 0.0

    def text(self) -> str:
        if self.excess is None:
            return self.why or "—"
        e = self.excess
        verdict = {True: " ≈ random", False: "", None: " (n < 2)"}[self.indistinguishable]
        return f"{self.mean:.3g} (random {self.baseline:.3g}; {e.value:+.3g} [{e.low:.3g}, {e.high:.3g}]){verdict}"


@dataclass
class Setting:
    """The runs of one defence setting (or the undefended reference) in one context."""

    label: str  # e.g. "sigma=0.1", "none"
    order: float  # position from weakest (the reference: −inf)
    runs: list[Run]
    cells: dict[str, Cell] = field(default_factory=dict)
    utility: Estimate | None = None


@dataclass
class DefenceStop:
    """One defence in one context: its settings weakest first and, per measure, where the attack stops."""

    context: str
    defence: str
    axis: str
    reference: Setting | None
    settings: list[Setting]
    stops: dict[str, str] = field(default_factory=dict)


def _context(run: Run, fields_: Sequence[str]) -> str:
    return ", ".join(f"{k}={run.config.get(k)}" for k in fields_) or "all runs"


def _specs(run: Run) -> list[tuple[str, dict[str, Any]]]:
    return [parse_defense(s) for s in run.config.get("defense") or []]


def _family(run: Run) -> str:
    return "+".join(name for name, _ in _specs(run)) or UNDEFENDED


def _axis(runs: Sequence[Run]) -> list[tuple[int, str]]:
    """(position in the list, parameter) of every defence parameter that varies across ``runs``."""
    values: dict[tuple[int, str], set] = {}
    for r in runs:
        for i, (_, params) in enumerate(_specs(r)):
            for k, v in params.items():
                values.setdefault((i, k), set()).add(v)
    return [key for key, seen in values.items() if len(seen) > 1]


def _strength(run: Run, axis: Sequence[tuple[int, str]]) -> tuple[float, str]:
    """(order from weakest, label) of a run's setting along the varying parameters."""
    specs = _specs(run)
    if not axis:
        return 0.0, " + ".join(run.config.get("defense") or []) or UNDEFENDED
    i, key = axis[0]
    name, params = specs[i]
    order = STRONGER.get((name, key), 1) * float(params[key])
    label = ", ".join(f"{specs[j][0]} {k}={specs[j][1][k]:g}" for j, k in axis)
    return order, label


def _cell(runs: Sequence[Run], key: str, baselines: Sequence[str]) -> Cell:
    pairs = []
    for r in runs:
        base = next((r.value(b) for b in baselines if r.value(b) is not None), None)
        if r.value(key) is not None and base is not None:
            pairs.append((r.value(key), base))
    if not pairs:
        missing = key if all(r.value(key) is None for r in runs) else f"its random baseline ({baselines[0]})"
        return Cell(why=f"not recorded: {missing}")
    values, bases = [v for v, _ in pairs], [b for _, b in pairs]
    excess = mean_interval([v - b for v, b in pairs])
    return Cell(sum(values) / len(values), sum(bases) / len(bases), excess)


def _utility_index(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Cached utilities by setting (seed left out), for the budget of the sweep's experiment file."""
    budget = {}
    try:
        budget = (yaml.safe_load((out / "experiment.yaml").read_text()) or {}).get("utility") or {}
    except (OSError, yaml.YAMLError):
        pass
    index: dict[str, list[dict[str, Any]]] = {}
    for u in load_utilities(out).values():
        if budget and (u.get("rounds"), u.get("clients")) != (budget.get("rounds"), budget.get("clients")):
            continue
        setting = {k: v for k, v in (u.get("setting") or {}).items() if k in UTILITY_OPTIONS and k != "seed"}
        index.setdefault(json.dumps(setting, sort_keys=True), []).append(u)
    return index


def _utility(runs: Sequence[Run], index: dict[str, list[dict[str, Any]]]) -> Estimate | None:
    """Held-out FedAvg accuracy of a setting: mean over the utility seeds with a bootstrap interval
    over them (≥ 2 seeds), else the one seed's interval over test images."""
    if not runs:
        return None
    key = json.dumps({k: runs[0].config.get(k) for k in UTILITY_OPTIONS if k != "seed"}, sort_keys=True)
    found = index.get(key) or []
    if not found:
        return None
    if len(found) == 1:
        u = found[0]
        return Estimate(u["accuracy"], u["low"], u["high"], (1,))
    return mean_interval([u["accuracy"] for u in found])


def _stop(stop: DefenceStop, measure: str) -> str:
    """The weakest indistinguishable setting, a stronger one that leaks again, or none in the range."""
    verdicts = [(s.label, s.cells[measure].indistinguishable) for s in stop.settings]
    first = next((i for i, (_, v) in enumerate(verdicts) if v), None)
    ref = stop.reference.cells[measure].indistinguishable if stop.reference else None
    if first is None:
        judged = [label for label, v in verdicts if v is not None]
        if not judged:
            return "not judged (fewer than 2 runs or no baseline)"
        return f"{NONE_IN_RANGE} ({judged[0]} … {judged[-1]})" if len(judged) > 1 else f"{NONE_IN_RANGE} ({judged[0]})"
    text = verdicts[first][0]
    again = [label for label, v in verdicts[first + 1:] if v is False]
    if again:
        text += f" (leaks again at {', '.join(again)})"
    if ref:
        text += " (already ≈ random undefended)"
    return text


def where_attacks_stop(out: Path, runs: Sequence[Run]) -> list[DefenceStop]:
    """Per context and defence: the settings weakest first with their cells and utility, and the
    weakest indistinguishable setting per measure. Empty when no run applied a defence."""
    if not any(r.config.get("defense") for r in runs):
        return []
    keys = sorted({k for r in runs for k in r.config} - NOT_CONTEXT)
    fields_ = [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]
    index = _utility_index(out)
    contexts: dict[str, dict[str, list[Run]]] = {}
    for r in runs:
        contexts.setdefault(_context(r, fields_), {}).setdefault(_family(r), []).append(r)
    stops = []
    for context, families in sorted(contexts.items()):
        reference = _setting(UNDEFENDED, float("-inf"), families.get(UNDEFENDED, []), index)
        for family, family_runs in sorted(families.items()):
            if family == UNDEFENDED:
                continue
            axis = _axis(family_runs)
            groups: dict[tuple[float, str], list[Run]] = {}
            for r in family_runs:
                groups.setdefault(_strength(r, axis), []).append(r)
            settings = [_setting(label, order, group, index) for (order, label), group in sorted(groups.items())]
            axis_name = ", ".join(f"{_specs(family_runs[0])[i][0]} {k}" for i, k in axis) or "(one setting)"
            stop = DefenceStop(context, family, axis_name, reference, settings)
            stop.stops = {name: _stop(stop, name) for name, _, _ in MEASURES}
            stops.append(stop)
    return stops


def _setting(label: str, order: float, runs: list[Run], index) -> Setting | None:
    if not runs:
        return None
    s = Setting(label, order, runs, utility=_utility(runs, index))
    s.cells = {name: _cell(runs, key, bases) for name, key, bases in MEASURES}
    return s


def _pct(e: Estimate | None) -> str:
    return "—" if e is None else f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def stop_table(stops: Sequence[DefenceStop]) -> tuple[list[str], list[list[str]]]:
    """One row per context and defence: the weakest setting at which each measure is ≈ random."""
    header = ["context", "defence", "strength", "utility undefended", *(m for m, _, _ in MEASURES)]
    rows = [[s.context, s.defence, s.axis, _pct(s.reference.utility if s.reference else None),
             *(s.stops[m] for m, _, _ in MEASURES)] for s in stops]
    return header, rows


def detail_table(stops: Sequence[DefenceStop]) -> tuple[list[str], list[list[str]]]:
    """Every setting (reference first): runs, utility and each measure against its baseline."""
    header = ["context", "defence", "setting", "runs", "utility [95% CI]", *(m for m, _, _ in MEASURES)]
    rows, seen = [], set()
    for s in stops:
        settings = ([s.reference] if s.reference and (s.context, UNDEFENDED) not in seen else []) + s.settings
        seen.add((s.context, UNDEFENDED))
        for st in settings:
            name = UNDEFENDED if st is s.reference else s.defence
            rows.append([s.context, name, st.label, str(len(st.runs)), _pct(st.utility),
                         *(st.cells[m].text() for m, _, _ in MEASURES)])
    return header, rows


RULE = ("For each defence (its strength parameter ordered weakest to strongest) and leakage measure, the table "
        "names the weakest setting at which the measure is indistinguishable from its random baseline: the 95% "
        "percentile-bootstrap interval (over runs) of the mean excess, measure − baseline, reaches 0. Baselines: "
        "label and naming accuracy — the expected accuracy of uniform random guesses (label_random_baseline, "
        "semantic_random_baseline); SSIM and PSNR — the inversion's random starting images scored against the "
        "batch under the same matching (ssim/psnr_random_baseline). Settings with fewer than 2 runs are not judged. "
        "Utility: held-out accuracy of the architecture trained by FedAvg with the defence (cached per setting "
        "in DIR/utility/), mean [95% CI].")


def stops_html(stops: Sequence[DefenceStop], plots: Sequence[Any]) -> str:
    """The report section: the rule, the summary table, the plots and the per-setting evidence."""
    from .html import _plot_html, _table_html

    if not stops:
        return ""
    return "\n".join(["<h2 id='where-attacks-stop'>Where attacks stop</h2>", f"<p>{html.escape(RULE)}</p>",
                      _table_html(*stop_table(stops)), *map(_plot_html, plots),
                      "<h3>Every setting: measure (random baseline; excess [95% CI])</h3>",
                      _table_html(*detail_table(stops))])


__all__ = ["MEASURES", "NONE_IN_RANGE", "RULE", "STRONGER", "Cell", "DefenceStop", "Setting", "detail_table",
           "stop_table", "stops_html", "where_attacks_stop"]
