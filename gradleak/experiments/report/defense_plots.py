"""Plots of "where attacks stop": each leakage measure against a defence's strength and against
its utility, one figure per defence, one line per context (dataset, model, B, …)."""

from __future__ import annotations

from typing import Sequence

from .defenses import MEASURES, UNDEFENDED, DefenceStop, Setting
from .plots import Plot, _png, plt


def _points(stop: DefenceStop) -> list[Setting]:
    return ([stop.reference] if stop.reference else []) + stop.settings


def _errorbar(ax, xs, settings: Sequence[Setting], measure: str, label: str, color) -> None:
    ys, lo, hi, base = [], [], [], []
    for s in settings:
        c = s.cells[measure]
        if c.excess is None:
            ys.append(float("nan")), lo.append(0.0), hi.append(0.0), base.append(float("nan"))
            continue
        ys.append(c.mean)
        # the interval of the excess, shifted back onto the measure's own scale
        lo.append(max(0.0, c.mean - (c.baseline + c.excess.low)))
        hi.append(max(0.0, c.baseline + c.excess.high - c.mean))
        base.append(c.baseline)
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label, color=color)
    ax.plot(xs, base, linestyle=":", color=color, alpha=0.7)


def defence_plots(stops: Sequence[DefenceStop]) -> list[Plot]:
    """Two figures per defence: measures vs strength (categorical, weakest first, "none" = the
    undefended reference) and measures vs utility."""
    plots = []
    for defence in sorted({s.defence for s in stops}):
        group = [s for s in stops if s.defence == defence]
        safe = "".join(ch if ch.isalnum() else "_" for ch in defence)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        # strength: one shared categorical axis over every context's settings, weakest first
        labels = [UNDEFENDED] + sorted({st.label for s in group for st in s.settings},
                                       key=lambda lab: min(st.order for s in group for st in s.settings
                                                           if st.label == lab))
        fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.8), squeeze=False)
        for ax, (measure, _, _) in zip(axes[0], MEASURES):
            for k, s in enumerate(group):
                pts = _points(s)
                _errorbar(ax, [labels.index(p.label) for p in pts], pts, measure, s.context, colors[k % len(colors)])
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
            ax.set_title(measure, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"{defence}: leakage vs strength ({group[0].axis})", fontsize=10)
        plot = Plot(f"stop_{safe}_strength", f"{defence}: leakage vs strength",
                    "Mean over runs with the 95% bootstrap interval; dotted: the random baseline in the same colour. "
                    "Strength grows to the right; 'none' is the undefended reference.")
        plot.png = _png(fig)
        plots.append(plot)
        plot = Plot(f"stop_{safe}_utility", f"{defence}: leakage vs utility",
                    "Each point a setting (the undefended reference included); x: held-out FedAvg accuracy with "
                    "the defence; dotted: the random baseline.")
        if not any(p.utility for s in group for p in _points(s)):
            plot.missing = "no data: no utility computed (add utility: to the experiment file and rerun the sweep)"
            plots.append(plot)
            continue
        fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.8), squeeze=False)
        for ax, (measure, _, _) in zip(axes[0], MEASURES):
            for k, s in enumerate(group):
                pts = [p for p in _points(s) if p.utility is not None]
                if pts:
                    _errorbar(ax, [p.utility.value for p in pts], pts, measure, s.context, colors[k % len(colors)])
            ax.set_xlabel("utility (held-out accuracy)", fontsize=8)
            ax.set_title(measure, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"{defence}: leakage vs utility", fontsize=10)
        plot.png = _png(fig)
        plots.append(plot)
    return plots


__all__ = ["defence_plots"]
