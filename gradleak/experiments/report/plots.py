"""The report's plots, each a PNG in memory (or the reason there is none) with its caption."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ...io import atomic_write  # noqa: E402
from ...metrics.intervals import Stat  # noqa: E402
from .runs import (  # noqa: E402
    AGGREGATED_KEY,
    SEMANTIC_BASELINE_KEY,
    Run,
    batch_stats,
    by_batch,
    group_series,
    guidance_points,
)

# Marker and line per semantic curve, so curves that coincide (e.g. all at 1.0) stay distinguishable.
SEMANTIC_STYLES = {"originals": {"marker": "s", "linestyle": ":"}, "reconstructions": {"marker": "o"},
                   "aggregated": {"marker": "^", "linestyle": "--", "markersize": 9, "fillstyle": "none"}}
SEMANTIC_KEYS: tuple[tuple[str, str], ...] = (
    ("original_semantic_accuracy", "originals"),
    ("semantic_accuracy", "reconstructions"),
    (AGGREGATED_KEY, "aggregated"),  # over restarts (and rounds), when the run aggregated
)
EXAMPLE_BATCH_SIZES = (1, 2, 4)

Curve = tuple[str, dict[int, Stat], dict]  # label, stats by batch size, matplotlib style


@dataclass
class Plot:
    """A PNG (or the reason there is none) with its caption."""

    name: str
    title: str
    caption: str
    png: bytes | None = None
    missing: str = ""


def _batch_axes(ax, batch_sizes: Sequence[int], ylabel: str) -> None:
    if batch_sizes and max(batch_sizes) > 2 * max(1, min(batch_sizes)):
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(batch_sizes)))
    ax.set_xticklabels([str(b) for b in sorted(set(batch_sizes))])
    ax.set_xlabel("batch size B")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _errorbar(ax, stats: dict[int, Stat], label: str, **style) -> None:
    xs = list(stats)
    ax.errorbar(xs, [stats[b].mean for b in xs], yerr=[stats[b].std for b in xs], capsize=3, label=label,
                **{"marker": "o", **style})


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _curves_plot(name: str, title: str, ylabel: str, curves: list[Curve], caption: str, missing: str,
                 ylim: tuple[float, float] | None = (0.0, 1.05)) -> Plot:
    curves = [c for c in curves if c[1]]
    plot = Plot(name, title, caption)
    if not curves:
        plot.missing = missing
        return plot
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, stats, style in curves:
        _errorbar(ax, stats, label, **style)
    _batch_axes(ax, [b for _, s, _ in curves for b in s], ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.legend(fontsize=8)
    plot.png = _png(fig)
    return plot


def baseline_curve(runs: Sequence[Run], key: str = "label_random_baseline") -> Curve:
    return ("random baseline", by_batch(runs, lambda r: r.value(key)), {"color": "grey", "linestyle": "--"})


def _series_curves(runs: Sequence[Run], key: str) -> list[Curve]:
    return [(label, by_batch(group, lambda r: r.value(key)), {}) for label, group in group_series(runs).items()]


def label_accuracy_plot(runs: Sequence[Run]) -> Plot:
    return _curves_plot("label_accuracy", "Label accuracy vs batch size", "label accuracy (order-free)",
                        _series_curves(runs, "label_accuracy") + [baseline_curve(runs)],
                        "Mean ± standard deviation over seeds; dashed: expected accuracy of random guesses.",
                        "no data: no run recorded label accuracy")


def ssim_plot(runs: Sequence[Run]) -> Plot:
    return _curves_plot("ssim", "Reconstruction SSIM vs batch size", "SSIM (matched)", _series_curves(runs, "ssim"),
                        "Permutation-agnostic SSIM of the reconstructions, mean ± standard deviation over seeds.",
                        "no data: no run recorded SSIM")


def semantic_plot(runs: Sequence[Run]) -> Plot:
    curves = []
    for label, group in group_series(runs).items():
        for key, what in SEMANTIC_KEYS:
            suffix = f" ({label})" if label != "all runs" else ""
            curves.append((f"{what}{suffix}", by_batch(group, lambda r, k=key: r.value(k)), SEMANTIC_STYLES[what]))
    have = any(c[1] for c in curves)
    base_key = SEMANTIC_BASELINE_KEY if any(r.value(SEMANTIC_BASELINE_KEY) is not None for r in runs) \
        else "label_random_baseline"
    return _curves_plot("semantic", "Semantic label accuracy vs batch size", "semantic accuracy",
                        curves + ([baseline_curve(runs, base_key)] if have else []),
                        "Accuracy of the semantic labeller on the originals, on the reconstructions, and "
                        "aggregated over restarts/rounds.",
                        "no data: no run recorded semantic accuracy (originals / reconstructions / aggregated)")


def guidance_plot(runs: Sequence[Run]) -> Plot:
    points = guidance_points(runs)
    modes = sorted({m for m, _, _ in points})
    curves = []
    if len(modes) > 1:  # one mode alone compares nothing
        curves = [(f"guidance: {mode}", batch_stats((r.batch_size, v) for m, r, v in points if m == mode), {})
                  for mode in modes]
    return _curves_plot("guidance", "Guidance: SSIM vs batch size", "SSIM (matched)", curves,
                        "SSIM with each guidance mode (none = no guidance term).",
                        "no data: no runs compared guidance modes (none vs oracle)")


def examples_plot(runs: Sequence[Run]) -> Plot:
    """The runs' own grid.png files (reconstruction over original), one per example batch size."""
    import matplotlib.image as mpimg

    plot = Plot("grid_examples", "Reconstructions over originals",
                "Top row of each panel: originals; bottom: the matched reconstructions with recovered label "
                "and per-image SSIM. One seed of the first series.")
    groups = group_series(runs)
    first = next(iter(groups.values()), [])
    sizes = [b for b in EXAMPLE_BATCH_SIZES if any(r.batch_size == b for r in first)]
    if not sizes:
        sizes = sorted({r.batch_size for r in first})[:3]
    chosen = []
    for b in sizes:
        candidates = sorted((r for r in first if r.batch_size == b and (r.folder / "grid.png").is_file()),
                            key=lambda r: (r.config.get("seed", 0), r.id))
        if candidates:
            chosen.append((b, candidates[0]))
    if not chosen:
        plot.missing = "no data: no run folder has a grid.png"
        return plot
    images = [mpimg.imread(r.folder / "grid.png") for _, r in chosen]
    heights = [img.shape[0] for img in images]
    width = max(img.shape[1] for img in images)
    fig, axes = plt.subplots(len(images), 1, figsize=(max(4.0, width / 100), sum(heights) / 100 + 0.4 * len(images)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (b, run), img in zip(axes[:, 0], chosen, images):
        ax.imshow(img)
        ax.set_title(f"B = {b} (seed {run.config.get('seed')}, SSIM {run.value('ssim') or 0:.2f})", fontsize=9)
        ax.axis("off")
    plot.png = _png(fig)
    return plot


PLOTS: tuple[Callable[[Sequence[Run]], Plot], ...] = (
    label_accuracy_plot, ssim_plot, semantic_plot, guidance_plot, examples_plot)


def save_plots(out: Path, plots: Sequence[Plot]) -> dict[str, Path | None]:
    """Write each plot to ``out/<name>.png``; a plot without data gets ``None`` and no file."""
    written: dict[str, Path | None] = {}
    for p in plots:
        path = out / f"{p.name}.png"
        if p.png is not None:
            written[p.name] = atomic_write(path, p.png)
        else:
            path.unlink(missing_ok=True)  # a stale plot from an earlier report would contradict the page
            written[p.name] = None
    return written
