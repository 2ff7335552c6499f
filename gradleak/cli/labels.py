"""``gradleak labels``: analytic label recovery, every strategy × batch size."""

from __future__ import annotations

from pathlib import Path

import click

from ..attacks.labels.sweep import BATCH_SIZES, LabelSweepConfig, run_and_write_label_sweep, summarise
from ..models import init_name
from . import cli
from .common import init_option


@cli.command()
@click.option("--dataset", type=click.Choice(["digits", "cifar10"]), default="cifar10", show_default=True)
@click.option("--data-dir", type=click.Path(), default=None)
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--model", type=click.Choice(["lenet", "convnet", "resnet18"]), default="convnet", show_default=True)
@click.option("--width", type=int, default=None)
@init_option
@click.option("--batch-sizes", type=int, default=None,
              help="Batch sizes, space separated: --batch-sizes 1 2 4 8 (default: 1 2 4 8 16 32 64 128).")
@click.option("--trials", type=int, default=10, show_default=True)
@click.option("--methods", default="all", show_default=True, help="all, or a comma-separated list of strategies.")
@click.option("--trained-steps", type=int, default=0, show_default=True)
@click.option("--client-mode", type=click.Choice(["train", "eval"]), default="train", show_default=True)
@click.option("--update", type=click.Choice(["fedsgd", "fedavg"]), default="fedsgd", show_default=True)
@click.option("--local-steps", type=int, default=1, show_default=True)
@click.option("--local-lr", type=float, default=0.1, show_default=True)
@click.option("--label-aux", type=click.Choice(["none", "public"]), default="none", show_default=True,
              help="public: llg+ and ilrg-dummy may use the other split's images instead of dummy inputs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--inits", type=int, default=1, show_default=True,
              help="How many model seeds (--seed, --seed + 1, …) to initialise; the trials take turns over them.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="runs/labels", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
@click.argument("extra_batch_sizes", nargs=-1, type=int)
def labels(batch_sizes, extra_batch_sizes, methods, out, quiet, **params) -> None:
    """Recover the labels of real batches from their gradients; table, labels.csv and labels.png."""
    sizes = ([batch_sizes] if batch_sizes is not None else []) + list(extra_batch_sizes) or list(BATCH_SIZES)
    cfg = LabelSweepConfig(batch_sizes=sizes, methods=[m.strip() for m in methods.split(",")], **params)
    rows = run_and_write_label_sweep(cfg, Path(out), progress=not quiet)
    summary = summarise(rows)
    names = list(dict.fromkeys(s["method"] for s in summary))
    cell = {(s["method"], s["batch_size"]): s for s in summary}
    victim = "untrained" if not cfg.trained_steps else f"trained {cfg.trained_steps} steps"
    update = cfg.update if cfg.update == "fedsgd" else f"{cfg.update} K={cfg.local_steps} lr={cfg.local_lr}"
    first, last = min(r["model_seed"] for r in rows), max(r["model_seed"] for r in rows)
    seeds = f"seed {first}" if last == first else f"seeds {first}–{last}"
    click.echo(f"{cfg.model} ({init_name(cfg.model, cfg.init)} init, {victim}, {cfg.client_mode} mode) on "
               f"{cfg.dataset} {cfg.split}, {update}, {cfg.trials} trials per batch size, {seeds}")
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
