"""``gradleak flower-demo``: attack a real Flower federation (SuperLink + SuperNodes on loopback)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import GradleakError
from ..integrations.flower_demo import APP_OPTIONS, DEMO_DEFAULTS
from ..integrations.privacy import FLOWER_DP, FLOWER_SECAGG
from . import cli
from .options import build_config, config_file_option, config_options, overwrite_option


@cli.command("flower-demo")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Federated rounds.")
@click.option("--clients", type=click.IntRange(min=1), default=2, show_default=True,
              help="SuperNodes (one client each).")
@click.option("--local-epochs", type=click.IntRange(min=1), default=None,
              help="Clients train this many local epochs over their batch in mini-batches of --local-batch-size "
                   "(K = epochs · ⌈B/b⌉ steps, sent in the train config; replaces --local-steps).")
@click.option("--attack-from-round", type=click.IntRange(min=1), default=1, show_default=True,
              help="Attack the rounds from this one on; earlier rounds only train the global model.")
@config_options(include=[n for n in APP_OPTIONS if n != "iterations"])
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help=f"Inversion steps per attack.  [default: {DEMO_DEFAULTS['iterations']}, the demo's]")
@config_file_option
@click.option("--out", "-o", type=click.Path(file_okay=False), default="runs/flower-demo", show_default=True)
@overwrite_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=300.0,
              show_default=True,
              help="Wall-clock bound for the whole demo, in seconds; every process is ended by then.")
@click.option("--attack-timeout", "attack_timeout_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Bound per attack in seconds (default: --timeout).")
@click.option("--isolation", type=click.Choice(["process", "thread"]), default="process", show_default=True,
              help="Run attacks in a killable process, or a thread (no start-up cost).")
@click.option("--save-captures", is_flag=True,
              help="Also save every captured update under OUT/captures as a recorded-update file (replay it with "
                   "gradleak attack --observed-update FILE --dataset D --model M).")
@click.option("--app", type=click.Path(file_okay=False), default=None,
              help="Flower app folder (default: the app shipped with gradleak, gradleak/integrations/flower_app).")
@click.option("--flower-dp", default="none", show_default=True, metavar="SPEC",
              help=f"Flower's own DP: {' | '.join(FLOWER_DP.names())}, e.g. client-fixed:C=0.5,sigma=1 "
                   "(fixedclipping_mod + Flower's DP strategy wrapper), server-fixed:C=0.5,sigma=1, "
                   "local:C=0.5,epsilon=10 (LocalDpMod). The report says what the server still sees and learns.")
@click.option("--flower-secagg", default="none", show_default=True, metavar="SPEC",
              help=f"Flower's secure aggregation: {' | '.join(FLOWER_SECAGG.names())}[:shares=f,threshold=f,"
                   "max_weight=w,clip=r] (SecAgg+; the server, and the attack, see only each round's aggregate).")
def flower_demo(config_file, out, overwrite, app, **params) -> None:
    """Run a real Flower federation whose server attacks every client update; print what leaked.

    The task and attack options are gradleak's own (a --config YAML file holds them too; flags win).
    The demo runs the SuperLink and SuperNodes on 127.0.0.1 with TLS off (Flower's --insecure),
    loopback only; a real deployment must run Flower with TLS certificates, see Flower's
    "Enable TLS connections":

    \b
    https://flower.ai/docs/framework/how-to-enable-tls-connections.html
    """
    from ..integrations.flower import require_flwr

    require_flwr()
    from ..integrations.flower_demo import FlowerDemoConfig, format_report, run_flower_demo

    attack = build_config(params, config_file, defaults=DEMO_DEFAULTS)  # leaves the demo's own options in params
    cfg = FlowerDemoConfig(attack, out=Path(out), overwrite=overwrite, app=Path(app) if app else None, **params)
    result = run_flower_demo(cfg)
    click.echo(format_report(result))
    if result.error:
        raise GradleakError(result.error)
