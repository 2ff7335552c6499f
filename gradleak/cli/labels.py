"""``gradleak labels``: analytic label recovery, every strategy × batch size."""

from __future__ import annotations

from pathlib import Path

import click

from ..models import init_name
from ..studies.label_sweep import BATCH_SIZES, LabelSweepConfig, run_and_write_label_sweep, summarise
from . import cli
from .options import build_config, config_file_option, config_options, overwrite_option, quiet_option

# The options that shape the victim, its data and update, and what label recovery may use.
LABEL_OPTIONS = ("dataset", "data_dir", "split", "model", "width", "init", "trained_steps", "client_mode", "update",
                 "local_steps", "local_lr", "local_batch_size", "label_aux", "seed", "threads")


@cli.command()
@config_options(include=LABEL_OPTIONS)
@config_file_option
@click.option("--batch-sizes", type=int, default=None,
              help="Batch sizes, space separated: --batch-sizes 1 2 4 8 (default: 1 2 4 8 16 32 64 128).")
@click.option("--trials", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--methods", default="all", show_default=True, help="all, or a comma-separated list of strategies.")
@click.option("--inits", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many model seeds (--seed, --seed + 1, …) to initialise; the trials take turns over them.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="runs/labels", show_default=True,
              help="Results folder; a folder holding the same sweep resumes where it stopped.")
@overwrite_option
@quiet_option
@click.argument("extra_batch_sizes", nargs=-1, type=int)
def labels(config_file, batch_sizes, extra_batch_sizes, trials, methods, inits, out, overwrite, quiet, **params) -> None:
    """Recover the labels of real batches from their gradients; table, labels.csv and labels.png."""
    sizes = ([batch_sizes] if batch_sizes is not None else []) + list(extra_batch_sizes) or list(BATCH_SIZES)
    cfg = LabelSweepConfig(build_config(params, config_file), sizes, trials,
                           [m.strip() for m in methods.split(",")], inits)
    rows = run_and_write_label_sweep(cfg, Path(out), progress=not quiet, overwrite=overwrite)
    summary = summarise(rows)
    names = list(dict.fromkeys(s["method"] for s in summary))
    cell = {(s["method"], s["batch_size"]): s for s in summary}
    a = cfg.attack
    victim = "untrained" if not a.victim.trained_steps else f"trained {a.victim.trained_steps} steps"
    c = a.client
    update = c.update if c.update == "fedsgd" else f"{c.update} K={c.local_steps} lr={c.local_lr}"
    first, last = min(r["model_seed"] for r in rows), max(r["model_seed"] for r in rows)
    seeds = f"seed {first}" if last == first else f"seeds {first}–{last}"
    click.echo(f"{a.victim.model} ({init_name(a.victim.model, a.victim.init)} init, {victim}, {c.client_mode} mode) on "
               f"{a.data.dataset} {a.data.split}, {update}, {cfg.trials} trials per batch size, {seeds}")
    click.echo("mean order-free accuracy ± its standard error over the trials / fraction exact "
               "('-': method does not apply)")
    click.echo(f"{'B':>4} {'random':>7} " + " ".join(f"{m:>18}" for m in names))
    for b in sizes:
        base = cell[(names[0], b)]["random_baseline"]
        parts = [_cell(cell[(m, b)]) for m in names]
        click.echo(f"{b:>4} {base:>7.3f} " + " ".join(f"{p:>18}" for p in parts))
    click.echo(f"→ {out}/labels.csv, {out}/labels.png")


def _cell(summary: dict) -> str:
    if summary["accuracy"] is None:
        return "-"
    se = f"±{summary['accuracy_se']:.3f}" if summary["accuracy_se"] is not None else ""
    return f"{summary['accuracy']:.3f}{se}/{summary['exact']:.2f}"
