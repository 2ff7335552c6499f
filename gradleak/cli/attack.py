"""``gradleak attack``: one attack against one simulated client."""

from __future__ import annotations

from dataclasses import fields

import click

from ..pipeline import AttackConfig, run_attack
from . import cli
from .common import explicit_options, init_option, load_yaml

_D = AttackConfig()


def attack_options(f):
    """The options every command that runs attacks shares, mapped 1:1 onto AttackConfig fields."""
    opts = [
        click.option("--dataset", type=click.Choice(["digits", "cifar10"]), default=_D.dataset, show_default=True,
                     help="Client data: scikit-learn digits (embedded) or CIFAR-10."),
        click.option("--data-dir", type=click.Path(), default=None,
                     help="Folder with cifar-10-batches-py (or its parent)."),
        click.option("--split", type=click.Choice(["train", "test"]), default=_D.split, show_default=True),
        click.option("--model", type=click.Choice(["lenet", "convnet", "resnet18"]), default=_D.model, show_default=True),
        click.option("--width", type=int, default=None, help="Model width (default: the architecture's)."),
        init_option,
        click.option("--trained-steps", type=int, default=0, show_default=True,
                     help="Train the victim this many SGD steps on the public train split first."),
        click.option("--batch-size", "-b", type=int, default=_D.batch_size, show_default=True),
        click.option("--client-mode", type=click.Choice(["eval", "train"]), default=_D.client_mode, show_default=True,
                     help="BN mode of the client's update: eval (running statistics) or train (batch statistics)."),
        click.option("--update", type=click.Choice(["fedsgd", "fedavg"]), default=_D.update, show_default=True),
        click.option("--local-steps", type=int, default=_D.local_steps, show_default=True, help="FedAvg local steps."),
        click.option("--local-lr", type=float, default=_D.local_lr, show_default=True, help="FedAvg local step size."),
        click.option("--local-batch-size", type=int, default=None, help="FedAvg local mini-batch (default: whole batch)."),
        click.option("--knows-labels/--no-knows-labels", default=False, show_default=True,
                     help="Threat model grants the true labels."),
        click.option("--knows-bn-stats/--no-knows-bn-stats", default=False, show_default=True,
                     help="Threat model grants the BN statistics of the client's batch."),
        click.option("--labels", default=_D.labels, show_default=True,
                     help="Label-recovery strategy when labels are not granted (auto = default strategy)."),
        click.option("--label-aux", type=click.Choice(["none", "public"]), default=_D.label_aux, show_default=True,
                     help="public: label recovery may use the other split's images instead of dummy inputs."),
        click.option("--attack", type=click.Choice(["ig", "dlg"]), default=_D.attack, show_default=True),
        click.option("--iterations", type=int, default=None, help="Optimisation steps (default: the preset's)."),
        click.option("--restarts", type=int, default=_D.restarts, show_default=True),
        click.option("--tv", type=float, default=None, help="Total-variation weight (default: the preset's)."),
        click.option("--step-size", type=float, default=None,
                     help="Adam step in normalised-input units (default: the preset's)."),
        click.option("--bn-prior", type=float, default=0.0, show_default=True, help="BN-statistics prior weight."),
        click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=_D.precision, show_default=True,
                     help="Autocast precision of the matching loss."),
        click.option("--seed", type=int, default=_D.seed, show_default=True),
        click.option("--labeler", type=click.Choice(["clip", "classifier", "none"]), default="none", show_default=True,
                     help="Name the reconstructions: CLIP zero-shot, an auxiliary classifier trained on public data, or not."),
        click.option("--clip-model", default=_D.clip_model, show_default=True,
                     help="CLIP weights: a Hugging Face hub id or a local folder."),
        click.option("--prompts", default=None,
                     help="Prompt templates: 'default', 'ensemble', or a file with one template per line containing {c}."),
        click.option("--class-names", default=None, type=click.Path(dir_okay=False),
                     help="File of class names, one per line (default: the dataset's)."),
        click.option("--classifier-steps", type=int, default=_D.classifier_steps, show_default=True,
                     help="Training steps of the auxiliary classifier (labeler=classifier)."),
        click.option("--guidance", type=click.Choice(["none", "oracle", "search"]), default="none", show_default=True,
                     help="Semantic guidance: none, oracle (true labels; an upper bound) or search over candidate labels."),
        click.option("--guide", type=click.Choice(["clip", "classifier"]), default=_D.guide, show_default=True,
                     help="Guidance model: CLIP text prompts or the auxiliary classifier (offline stand-in)."),
        click.option("--guidance-weight", type=float, default=_D.guidance_weight, show_default=True),
        click.option("--search-space", type=click.Choice(["labels", "guidance"]), default=_D.search_space,
                     show_default=True, help="search: candidates change the matched labels too, or the guidance only."),
        click.option("--compare-guidance", is_flag=True, help="Also reconstruct without guidance and report both SSIMs."),
        click.option("--observed-update", type=click.Path(), default=None,
                     help="Attack this recorded update (a file from --save-update) instead of a simulated one."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def config_from_cli(ctx: click.Context, params: dict, config_file: str | None) -> AttackConfig:
    merged = load_yaml(config_file) if config_file else {}
    names = {f.name for f in fields(AttackConfig)}
    merged.update({k: v for k, v in explicit_options(ctx, params).items() if k in names})
    return AttackConfig.from_dict(merged)


@cli.command()
@attack_options
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="YAML file of options; flags given on the command line win.")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="runs/attack", show_default=True)
@click.option("--save-update", type=click.Path(dir_okay=False), default=None,
              help="Also save the client's update to this file (replay it with --observed-update).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, only the summary line.")
@click.pass_context
def attack(ctx: click.Context, config_file, out, save_update, quiet, **params) -> None:
    """Attack one simulated client: reconstruct its images and labels from its update."""
    cfg = config_from_cli(ctx, params, config_file)
    result = run_attack(cfg, out, progress=not quiet, save_update_to=save_update)
    s = result.summary
    if s.get("search_accuracy") is not None:
        click.echo(f"label search by guidance: {s['search_labels']} accuracy {s['search_accuracy']:.2f} "
                   f"(random {s['search_random_baseline']:.2f}) over {len(s['candidate_losses'])} candidates")
    if "ssim_no_guidance" in s:
        click.echo(f"SSIM with guidance {s['ssim_with_guidance']:.3f}, without {s['ssim_no_guidance']:.3f}")
    if "semantic_accuracy" in s:
        click.echo(f"semantic labels {s['semantic_labels']}: accuracy {s['semantic_accuracy']:.2f} "
                   f"(originals {s['original_semantic_accuracy']:.2f}, random {s['semantic_random_baseline']:.2f})")
    click.echo(
        f"labels {s['label_accuracy']:.2f} (random {s['label_random_baseline']:.2f})  "
        f"SSIM {s['ssim']:.3f}  PSNR {s['psnr']:.2f} dB  "
        f"{s['seconds']:.1f} s ({s['seconds_per_iteration'] * 1000:.1f} ms/it)  → {out}/result.json, {out}/grid.png"
    )
