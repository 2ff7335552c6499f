"""``gradleak sweep`` (a grid of attacks into a resumable store) and ``gradleak report`` (plots + HTML)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import cli


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Results folder (store, run artefacts, report). Default: runs/<experiment name>.")
@click.option("--workers", "-j", type=int, default=1, show_default=True,
              help="Runs at a time (local: processes; ray: CPUs of the local Ray instance).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where runs execute; ray needs the 'ray' extra.")
@click.option("--address", default=None,
              help="Ray cluster address (e.g. ray://head:10001 or auto); default: start a local Ray instance "
                   "(its servers listen on every interface, guarded by Ray's token authentication).")
@click.option("--data-dir", type=click.Path(), default=None,
              help="CIFAR-10 folder for every run (overrides the file's data_dir; default: $GRADLEAK_CIFAR10_DIR).")
@click.option("--report/--no-report", "make_report", default=False, show_default=True,
              help="Write DIR/report.html when the sweep ends.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def sweep(experiment, out, workers, backend, address, data_dir, make_report, quiet) -> None:
    """Run every attack of EXPERIMENT.yaml (base: options, grid: option → values) not yet done in --out.

    Rerunning skips finished runs and retries failed ones; a killed sweep loses only the runs in flight.
    """
    from ..experiments import load_experiment, run_sweep

    exp = load_experiment(experiment, overrides={"data_dir": data_dir} if data_dir else None)
    out_dir = Path(out) if out else Path("runs") / exp.name
    summary = run_sweep(exp, out_dir, workers=workers, backend=backend, address=address,
                        progress=not quiet, echo=click.echo)
    click.echo(f"{summary.done} run(s) finished, {summary.failed} failed, {summary.skipped} skipped "
               f"→ {out_dir}/results.sqlite, {out_dir}/runs/")
    if summary.utility_done or summary.utility_failed:
        click.echo(f"utility: {summary.utility_done} setting(s) computed, {summary.utility_failed} failed "
                   f"→ {out_dir}/utility/")
    if make_report:
        _report(out_dir)
    else:
        click.echo(f"report: gradleak report {out_dir}")
    if summary.failed:
        click.echo(f"gradleak: {summary.failed} run(s) failed (errors in the store; rerun to retry them)", err=True)
        sys.exit(1)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
def report(directory) -> None:
    """Write DIRECTORY/report.html (self-contained) and PNG plots from a sweep's results."""
    _report(Path(directory))


def _report(directory: Path) -> None:
    from ..experiments import build_report

    rep = build_report(directory)
    click.echo(f"{rep.runs} done run(s), {rep.failed} failed → {rep.html}")
    for claim in rep.claims:
        click.echo(f"  [{claim.verdict}] {claim.text} {claim.evidence}")
    if rep.stops:  # runs with defences: where each leakage measure becomes indistinguishable from random
        from ..experiments.report import stop_table

        header, rows = stop_table(rep.stops)
        click.echo("where attacks stop (weakest setting ≈ random): " + " | ".join(header))
        for row in rows:
            click.echo("  " + " | ".join(row))
