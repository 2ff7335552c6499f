"""Image grids and plots as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .io import atomic_save  # noqa: E402


def _save(fig, path: Path) -> Path:
    """Write a figure atomically, so an interrupted run never leaves a truncated PNG behind."""
    try:
        fig.tight_layout()
        return atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)  # also on failure: a long sweep must not pile up open figures


def _to_hwc(img: torch.Tensor):
    img = img.detach().float().clamp(0, 1).cpu()
    if img.shape[0] == 1:
        return img[0].numpy(), "gray"
    return img.permute(1, 2, 0).numpy(), None


def save_grid(
    path: str | Path,
    rows: Sequence[torch.Tensor],
    captions: Sequence[Sequence[str]] | None = None,
    row_titles: Sequence[str] | None = None,
    max_columns: int = 16,
) -> Path:
    """Save image rows (each B×C×H×W in [0, 1]) one above the other, wrapping long batches."""
    path = Path(path)
    n = max(int(r.shape[0]) for r in rows)
    cols = min(n, max_columns)
    blocks = -(-n // cols)
    nrows = blocks * len(rows)
    fig, axes = plt.subplots(nrows, cols, figsize=(1.3 * cols + 0.8, 1.45 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for b in range(blocks):
        for r, images in enumerate(rows):
            ax_row = b * len(rows) + r
            for c in range(cols):
                i = b * cols + c
                if i >= images.shape[0]:
                    continue
                ax = axes[ax_row][c]
                arr, cmap = _to_hwc(images[i])
                ax.imshow(arr, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                if captions is not None and captions[r][i]:
                    ax.set_title(captions[r][i], fontsize=7)
            if row_titles is not None and cols:
                axes[ax_row][0].text(-0.15, 0.5, row_titles[r], transform=axes[ax_row][0].transAxes,
                                     rotation=90, va="center", ha="right", fontsize=8)
    return _save(fig, path)


def save_probability_table(path: str | Path, probabilities: torch.Tensor, class_names: Sequence[str]) -> Path:
    """Heatmap of a labeller's table: one row per reconstruction ("Label_i"), one column per name."""
    path = Path(path)
    p = probabilities.detach().float().cpu().numpy()
    n, c = p.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * c + 1.5), max(2.0, 0.45 * n + 1.2)))
    im = ax.imshow(p, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(c), list(class_names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), [f"Label_{i}" for i in range(n)], fontsize=8)
    for i in range(n):
        for j in range(c):
            if c <= 20 and n <= 32:
                ax.text(j, i, f"{p[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if p[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, label="probability")
    ax.set_title("labeller probabilities of the reconstructions")
    return _save(fig, path)


def save_rounds_plot(path: str | Path, rows: Sequence[dict]) -> Path:
    """Per-round vs aggregated semantic accuracy and label-map accuracy over rounds."""
    path = Path(path)
    r = [row["round"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, label, style in [
        ("semantic_accuracy", "semantic, this round", "o-"),
        ("semantic_accuracy_aggregated", "semantic, aggregated over rounds", "s-"),
        ("label_map_accuracy", "label map (index → name)", "^-"),
        ("original_semantic_accuracy", "labeller on originals", ":"),
        ("random_baseline", "random", "--"),
    ]:
        ax.plot(r, [row[key] for row in rows], style, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("semantic label recovery across rounds")
    return _save(fig, path)


def save_label_accuracy_plot(path: str | Path, summary: Sequence[dict]) -> Path:
    """Mean order-free label accuracy vs batch size, one line per method (bars: ± one standard error,
    where the summary has ``accuracy_se``), random baseline dashed."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    for m in methods:
        pts = sorted((s["batch_size"], s["accuracy"], s.get("accuracy_se") or 0.0)
                     for s in summary if s["method"] == m and s["accuracy"] is not None)
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="o-", label=m,
                        markersize=3, capsize=2)
    base = sorted({(s["batch_size"], s["random_baseline"]) for s in summary if s["method"] == methods[0]})
    ax.plot([p[0] for p in base], [p[1] for p in base], "k--", label="random")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("order-free label accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("label recovery from gradients")
    return _save(fig, path)
