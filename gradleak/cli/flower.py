"""``gradleak flower-demo``: attack a real Flower federation (SuperLink + SuperNodes on loopback)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import GradleakError
from . import cli
from .common import init_option


@cli.command("flower-demo")
@click.option("--rounds", type=int, default=3, show_default=True, help="Federated rounds.")
@click.option("--clients", type=int, default=2, show_default=True, help="SuperNodes (one client each).")
@click.option("--batch-size", "-b", type=int, default=4, show_default=True, help="Each client's private batch per round.")
@click.option("--dataset", type=click.Choice(["digits", "cifar10"]), default="digits", show_default=True)
@click.option("--data-dir", type=click.Path(), default=None, help="Folder with cifar-10-batches-py (or its parent).")
@click.option("--model", type=click.Choice(["lenet", "convnet", "resnet18"]), default="lenet", show_default=True)
@init_option
@click.option("--attack", type=click.Choice(["ig", "dlg"]), default="ig", show_default=True)
@click.option("--iterations", type=int, default=300, show_default=True, help="Inversion steps per attack.")
@click.option("--lr", type=float, default=0.1, show_default=True, help="Clients' local SGD step size (sent by the server).")
@click.option("--local-steps", type=int, default=1, show_default=True, help="1 = FedSGD; more = FedAvg.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(file_okay=False), default="runs/flower-demo", show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True,
              help="Wall-clock bound for the whole demo, in seconds; every process is ended by then.")
@click.option("--attack-timeout", "attack_timeout_s", type=float, default=None,
              help="Bound per attack in seconds (default: --timeout).")
@click.option("--isolation", type=click.Choice(["process", "thread"]), default="process", show_default=True,
              help="Run attacks in a killable process, or a thread (no start-up cost).")
@click.option("--save-captures", is_flag=True, help="Also save every captured (θ, θ') pair as .npz.")
@click.option("--app", type=click.Path(file_okay=False), default=None,
              help="Flower app folder (default: the app shipped with gradleak, gradleak/integrations/flower_app).")
def flower_demo(out, app, **params) -> None:
    """Run a real Flower federation whose server attacks every client update; print what leaked.

    The demo runs the SuperLink and SuperNodes on 127.0.0.1 with TLS off (Flower's --insecure),
    loopback only; a real deployment must run Flower with TLS certificates, see Flower's
    "Enable TLS connections":

    \b
    https://flower.ai/docs/framework/how-to-enable-tls-connections.html
    """
    from ..integrations.flower import require_flwr

    require_flwr()
    from ..integrations.flower_demo import FlowerDemoConfig, format_report, run_flower_demo

    cfg = FlowerDemoConfig(out=Path(out), app=Path(app) if app else None, **params)
    result = run_flower_demo(cfg)
    click.echo(format_report(result))
    if result.error:
        raise GradleakError(result.error)
