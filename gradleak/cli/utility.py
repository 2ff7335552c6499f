"""``gradleak utility``: held-out accuracy of FedAvg training with the client's defences (the utility
beside a defence's leakage)."""

from __future__ import annotations

import click

from ..studies.utility import DEFAULT_CLIENTS, DEFAULT_ROUNDS, fedavg_utility
from . import cli
from .options import build_config, config_file_option, config_options, quiet_option

# The options that change what the federation learns (the attack's own ones do not apply).
UTILITY_FLAGS = ("dataset", "data_dir", "batch_size", "model", "width", "init", "client_mode", "update",
                 "local_steps", "local_lr", "local_batch_size", "defense", "seed", "threads")


@cli.command()
@config_options(include=UTILITY_FLAGS)
@click.option("--rounds", type=click.IntRange(min=1), default=DEFAULT_ROUNDS, show_default=True,
              help="FedAvg rounds (server updates).")
@click.option("--clients", type=click.IntRange(min=1), default=DEFAULT_CLIENTS, show_default=True,
              help="Clients, each holding an equal share of the training split; all take part in every round.")
@config_file_option
@quiet_option
def utility(rounds, clients, config_file, quiet, **params) -> None:
    """Train the victim architecture by FedAvg with the --defense list and report its test accuracy."""
    cfg = build_config(params, config_file)
    u = fedavg_utility(cfg, rounds, clients, progress=not quiet)
    defences = ", ".join(cfg.client.defense) or "none"
    click.echo(f"utility ({defences}): held-out accuracy {u.accuracy:.3f} [95% CI {u.low:.3f}, {u.high:.3f}] over "
               f"{u.n_test} test images (chance {u.chance:.2f}); {rounds} rounds × {clients} clients, "
               f"{u.seconds:.1f} s")
    click.echo("  by round: " + ", ".join(f"{r}: {a:.3f}" for r, a in u.history))
