"""``gradleak rounds``: R rounds against one client, per-round and aggregated semantic accuracy."""

from __future__ import annotations

import click

from ..studies.outputs import replacing_output
from ..studies.rounds import RoundsConfig, run_rounds
from . import cli
from .options import build_config, config_file_option, config_options, overwrite_option, quiet_option


@cli.command()
@config_options(exclude=("observed_update",))
@click.option("--rounds", "-r", "n_rounds", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--steps-per-round", type=click.IntRange(min=0), default=20, show_default=True,
              help="Global-model SGD steps on public data between rounds.")
@config_file_option
@click.option("--out", "-o", type=click.Path(file_okay=False), default="runs/rounds", show_default=True)
@overwrite_option
@quiet_option
def rounds(n_rounds, steps_per_round, config_file, out, overwrite, quiet, **params) -> None:
    """Attack one client over several rounds; aggregate labels and recover the label map."""
    cfg = RoundsConfig(build_config(params, config_file), n_rounds, steps_per_round)
    with replacing_output(out, overwrite) as staging:
        rows = run_rounds(cfg, staging, progress=not quiet)
    click.echo(f"{'round':>5} {'labels':>7} {'SSIM':>6} {'semantic':>9} {'aggregated':>11} {'label map':>10}")
    for row in rows:
        click.echo(f"{row['round']:>5} {row['label_accuracy']:>7.2f} {row['ssim']:>6.3f} {row['semantic_accuracy']:>9.2f} "
                   f"{row['semantic_accuracy_aggregated']:>11.2f} {row['label_map_accuracy']:>10.2f}")
    click.echo(f"originals {rows[-1]['original_semantic_accuracy']:.2f}, random {rows[-1]['random_baseline']:.2f}"
               f"  → {out}/rounds.csv, {out}/rounds.png")
