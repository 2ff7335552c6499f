"""One attack, end to end: threat model → observed update → attack → metrics → report.

:func:`run_attack` is what ``gradleak attack`` calls and what sweeps and integrations reuse.
Each stage only sees what the previous stage hands it; the attack sees the
:class:`~gradleak.threat.Observation`, never the private batch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .threat import ThreatModel, UpdateConfig, simulate_client


@dataclass
class AttackConfig:
    """Every option of one attack run; the CLI and YAML files fill the same fields."""

    # client data and victim
    dataset: str = "digits"
    data_dir: str | None = None
    split: str = "test"
    model: str = "lenet"
    width: int | None = None
    trained_steps: int = 0
    batch_size: int = 4
    # client update
    update: str = "fedsgd"
    local_steps: int = 1
    local_lr: float = 0.1
    local_batch_size: int | None = None
    # threat model
    knows_labels: bool = False
    knows_bn_stats: bool = False
    knows_local_schedule: bool = True
    # attack
    labels: str = "auto"  # label-recovery strategy, or "auto" (the default strategy)
    attack: str = "ig"
    iterations: int | None = None  # None: the preset's
    restarts: int = 1
    tv: float | None = None  # None: the preset's
    bn_prior: float = 0.0
    precision: str = "fp32"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttackConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown attack option(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass
class AttackResult:
    """The outcome of one run: a JSON-able summary plus the tensors behind it."""

    summary: dict[str, Any]
    originals: torch.Tensor | None
    reconstruction: torch.Tensor
    class_names: list[str] = field(default_factory=list)


def inversion_config(cfg: AttackConfig):
    from .attacks.inversion import preset

    regs = None
    if cfg.tv is not None or cfg.bn_prior:
        regs = dict(preset(cfg.attack).regularizers)
        if cfg.tv is not None:
            regs["tv"] = cfg.tv
        if cfg.bn_prior:
            regs["bn_stats"] = cfg.bn_prior
    return preset(
        cfg.attack,
        iterations=cfg.iterations,
        restarts=cfg.restarts,
        precision=cfg.precision,
        seed=cfg.seed,
        regularizers=regs,
    )


def prepare_client(cfg: AttackConfig, progress: bool = False):
    """Load data, build (and optionally train) the victim, and draw the private batch."""
    from .data import load_dataset
    from .models import build_model
    from .models.train import train_victim

    data = load_dataset(cfg.dataset, cfg.split, cfg.data_dir)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.width, seed=cfg.seed)
    if cfg.trained_steps:
        public = load_dataset(cfg.dataset, "train", cfg.data_dir)
        train_victim(model, public.images, public.labels, cfg.trained_steps, data.mean, data.std,
                     seed=cfg.seed, progress=progress)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y, idx = data.sample_batch(cfg.batch_size, gen)
    return data, model, x, y, idx


def run_attack(cfg: AttackConfig, out_dir: str | Path | None = None, progress: bool = True) -> AttackResult:
    """Simulate the client, observe its update under the threat model, attack it, evaluate it."""
    from .attacks.inversion import invert
    from .attacks.labels import recover_labels
    from .metrics import evaluate_images, label_accuracy, random_baseline

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data, model, x, y, _ = prepare_client(cfg, progress)

    # The client: computes its update from the private batch.
    update = simulate_client(
        model, x, y,
        UpdateConfig(cfg.update, cfg.local_steps, cfg.local_lr, cfg.local_batch_size),
        data.mean, data.std,
    )
    # The server: sees only what the threat model grants.
    threat = ThreatModel(knows_labels=cfg.knows_labels, knows_bn_stats=cfg.knows_bn_stats,
                         knows_local_schedule=cfg.knows_local_schedule)
    obs = threat.observe(model, update, data.input_shape, data.num_classes, data.mean, data.std,
                         batch_size=x.shape[0], labels=y, class_names=data.class_names)

    started = time.perf_counter()
    if obs.labels is not None:
        labels, label_method = obs.labels, "granted"
    else:
        estimate = recover_labels(obs) if cfg.labels == "auto" else recover_labels(obs, cfg.labels)
        labels, label_method = estimate.labels, estimate.method
    inv_cfg = inversion_config(cfg)
    recon = invert(obs, labels, inv_cfg, progress=progress)
    seconds = time.perf_counter() - started

    ev = evaluate_images(recon.images, x)
    summary: dict[str, Any] = {
        "true_labels": y.tolist(),
        "recovered_labels": labels.tolist(),
        "label_method": label_method,
        "label_accuracy": label_accuracy(labels, y),
        "label_random_baseline": random_baseline(y, data.num_classes),
        "ssim": ev.ssim,
        "psnr": ev.psnr,
        "assignment": ev.assignment,
        "per_image_ssim": ev.per_image_ssim,
        "per_image_psnr": ev.per_image_psnr,
        "matching_loss": recon.matching_loss,
        "restart_losses": recon.restart_losses,
        "iterations": recon.iterations,
        "seconds": seconds,
        "seconds_per_iteration": recon.seconds / (recon.iterations * len(recon.restart_losses)),
        "class_names": data.class_names,
        "config": cfg.to_dict(),
        "inversion": inv_cfg.to_dict(),
    }
    result = AttackResult(summary, x, recon.images, data.class_names)
    if out is not None:
        write_outputs(result, out)
    return result


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically, so an interrupted run never leaves a half-written file over a good one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=False))
    os.replace(tmp, path)


def write_outputs(result: AttackResult, out: Path) -> None:
    from .viz import save_grid

    s = result.summary
    names = result.class_names
    perm = s["assignment"]
    top = [f"{names[t]}" for t in s["true_labels"]]
    # Reconstruction i was matched to original perm[i]; show it under that original.
    recon = torch.empty_like(result.reconstruction)
    bottom = [""] * len(perm)
    for i, j in enumerate(perm):
        recon[j] = result.reconstruction[i]
        bottom[j] = f"{names[s['recovered_labels'][i]]} {s['per_image_ssim'][i]:.2f}"
    save_grid(out / "grid.png", [result.originals, recon], [top, bottom],
              row_titles=["original", "reconstruction"])
    write_json(out / "result.json", s)
