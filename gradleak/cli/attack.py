"""``gradleak attack``: one attack against one simulated client (or one recorded update)."""

from __future__ import annotations

import click

from ..studies.attack import run_attack
from ..studies.outputs import replacing_output
from . import cli
from .options import build_config, config_file_option, config_options, overwrite_option, quiet_option


def _score(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


@cli.command()
@config_options()
@config_file_option
@click.option("--out", "-o", type=click.Path(file_okay=False), default="runs/attack", show_default=True)
@overwrite_option
@click.option("--save-update", type=click.Path(dir_okay=False), default=None,
              help="Also save the client's update to this file (replay it with --observed-update).")
@click.option("--save-truth", is_flag=True,
              help="Store the private batch in the --save-update file too, so a replay can be scored.")
@quiet_option
def attack(config_file, out, overwrite, save_update, save_truth, quiet, **params) -> None:
    """Attack one simulated client: reconstruct its images and labels from its update."""
    cfg = build_config(params, config_file)
    if save_truth and not save_update:
        raise click.UsageError("--save-truth needs --save-update FILE")
    with replacing_output(out, overwrite) as staging:
        result = run_attack(cfg, staging, progress=not quiet, save_update_to=save_update, save_truth=save_truth)
    s = result.summary
    if s.get("search_accuracy") is not None:
        click.echo(f"label search by guidance: {s['search_labels']} accuracy {s['search_accuracy']:.2f} "
                   f"(random {s['search_random_baseline']:.2f}) over {len(s['candidate_losses'])} candidates")
    if "ssim_no_guidance" in s:
        click.echo(f"SSIM with guidance {s['ssim_with_guidance']:.3f}, without {s['ssim_no_guidance']:.3f}")
    if "semantic_accuracy" in s:
        click.echo(f"semantic labels {s['semantic_labels']}: accuracy {s['semantic_accuracy']:.2f} "
                   f"(originals {s['original_semantic_accuracy']:.2f}, random {s['semantic_random_baseline']:.2f})")
    if s["true_labels"] is None:
        click.echo(f"recovered labels {s['recovered_labels']} (no ground truth in the recorded update: nothing scored)")
    click.echo(
        f"labels {_score(s['label_accuracy'], '.2f')} (random {_score(s['label_random_baseline'], '.2f')})  "
        f"SSIM {_score(s['ssim'], '.3f')}  PSNR {_score(s['psnr'], '.2f')} dB  "
        f"{s['seconds']:.1f} s ({s['seconds_per_iteration'] * 1000:.1f} ms/it)  → {out}/result.json, {out}/grid.png"
    )
