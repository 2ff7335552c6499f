"""``gradleak rounds``: R rounds against one client, per-round and aggregated semantic accuracy."""

from __future__ import annotations

import click

from ..rounds import RoundsConfig, run_rounds
from . import cli
from .attack import attack_options, config_from_cli


@cli.command()
@attack_options
@click.option("--rounds", "-r", "n_rounds", type=int, default=5, show_default=True)
@click.option("--steps-per-round", type=int, default=20, show_default=True,
              help="Global-model SGD steps on public data between rounds.")
@click.option("--config", "config_file", type=click.Path(), default=None)
@click.option("--out", "-o", type=click.Path(file_okay=False), default="runs/rounds", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
@click.pass_context
def rounds(ctx, n_rounds, steps_per_round, config_file, out, quiet, **params) -> None:
    """Attack one client over several rounds; aggregate labels and recover the label map."""
    cfg = config_from_cli(ctx, params, config_file)
    rows = run_rounds(RoundsConfig(cfg, n_rounds, steps_per_round), out, progress=not quiet)
    click.echo(f"{'round':>5} {'labels':>7} {'SSIM':>6} {'semantic':>9} {'aggregated':>11} {'label map':>10}")
    for row in rows:
        click.echo(f"{row['round']:>5} {row['label_accuracy']:>7.2f} {row['ssim']:>6.3f} {row['semantic_accuracy']:>9.2f} "
                   f"{row['aggregated_semantic_accuracy']:>11.2f} {row['label_map_accuracy']:>10.2f}")
    click.echo(f"originals {rows[-1]['original_semantic_accuracy']:.2f}, random {rows[-1]['random_baseline']:.2f}"
               f"  → {out}/rounds.csv, {out}/rounds.png")
