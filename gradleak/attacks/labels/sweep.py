"""Label-recovery sweeps: every strategy × batch size × trial on real batches, one row per run."""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ...errors import ConfigError, GradleakError, add_note, is_int_at_least
from ...threat import ThreatModel, UpdateConfig, simulate_client

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class LabelSweepConfig:
    dataset: str = "cifar10"
    data_dir: str | None = None
    split: str = "test"
    model: str = "convnet"
    width: int | None = None
    init: str | None = None  # victim initialisation (models.INITS); None: the architecture's usual one
    trained_steps: int = 0
    client_mode: str = "train"
    update: str = "fedsgd"
    local_steps: int = 1
    local_lr: float = 0.1
    batch_sizes: Sequence[int] = BATCH_SIZES
    trials: int = 10
    methods: Sequence[str] = field(default_factory=lambda: ["all"])
    seed: int = 0
    # model initialisations (seeds seed, seed + 1, …); trial t attacks init t mod inits. Untrained
    # LeNet's accuracy at one B differs by up to 0.03 between inits: one init is not "LeNet". Past 8
    # inits the dummy-feature cache (one entry per model and B) no longer holds a batch size's models.
    inits: int = 1
    # "public": the attacker holds the other split's images (for llg+ and ilrg-dummy); "none": dummies
    label_aux: str = "none"


def run_label_sweep(cfg: LabelSweepConfig, progress: bool = True) -> list[dict]:
    """Rows ``method, batch_size, trial, model_seed, accuracy, exact, random_baseline, seconds`` (plus
    ``error`` where a method does not apply, e.g. iDLG at B > 1)."""
    return [row for batch in iter_label_sweep(cfg, progress) for row in batch]


def iter_label_sweep(cfg: LabelSweepConfig, progress: bool = True) -> Iterator[list[dict]]:
    """The rows of :func:`run_label_sweep`, one batch (every method) at a time, as they are measured."""
    from ...data import load_dataset
    from ...models import build_model
    from ...models.train import train_victim
    from ...pipeline import label_aux_data, public_split, set_client_mode
    from . import LABEL_STRATEGIES

    methods = list(LABEL_STRATEGIES.names()) if list(cfg.methods) == ["all"] else list(cfg.methods)
    for m in methods:
        LABEL_STRATEGIES.get(m)  # unknown names fail before any work
    if not is_int_at_least(cfg.trials, 1):
        raise ConfigError(f"trials must be a positive integer, got {cfg.trials!r}")
    if not is_int_at_least(cfg.inits, 1):
        raise ConfigError(f"inits must be a positive integer, got {cfg.inits!r}")
    if not cfg.batch_sizes:
        raise ConfigError("no batch sizes to sweep")
    not_positive = [b for b in cfg.batch_sizes if not is_int_at_least(b, 1)]
    if not_positive:
        raise ConfigError(f"batch sizes must be positive integers, got {not_positive}")
    data = load_dataset(cfg.dataset, cfg.split, cfg.data_dir)
    too_big = [b for b in cfg.batch_sizes if b > len(data)]
    if too_big:
        raise ConfigError(f"batch sizes {too_big} do not fit the {len(data)} images of {cfg.dataset} {cfg.split}")
    public = (load_dataset(cfg.dataset, public_split(cfg.split), cfg.data_dir)
              if cfg.trained_steps or cfg.label_aux == "public" else None)
    aux = label_aux_data(cfg.label_aux, public)
    models = []  # models[i] has seed cfg.seed + i; no more than the trials can reach
    for seed in range(cfg.seed, cfg.seed + min(cfg.inits, cfg.trials)):
        model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.width, seed=seed, init=cfg.init)
        if cfg.trained_steps:
            train_victim(model, public.images, public.labels, cfg.trained_steps, data.mean, data.std, seed=seed)
        set_client_mode(model, cfg.client_mode)
        models.append(model)
    bar = tqdm(total=len(cfg.batch_sizes) * cfg.trials, disable=not progress, desc="label recovery", unit="batch")
    try:
        yield from _measure_batches(cfg, methods, data, models, aux, bar)
    finally:
        bar.close()


def _measure_batches(cfg, methods, data, models, aux, bar) -> Iterator[list[dict]]:
    from ...metrics import label_accuracy, random_baseline
    from . import recover_labels

    update_cfg = UpdateConfig(cfg.update, cfg.local_steps, cfg.local_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    for b in cfg.batch_sizes:
        for trial in range(cfg.trials):
            rows = []
            model = models[trial % len(models)]
            model_seed = cfg.seed + trial % len(models)
            x, y, _ = data.sample_batch(b, gen)
            update = simulate_client(model, x, y, update_cfg, data.mean, data.std)
            obs = ThreatModel().observe(model, update, data.input_shape, data.num_classes, data.mean, data.std,
                                        batch_size=b)
            baseline = random_baseline(y, data.num_classes)
            for method in methods:
                started = time.perf_counter()
                row = {"method": method, "batch_size": b, "trial": trial, "model_seed": model_seed,
                       "random_baseline": baseline}
                try:
                    est = recover_labels(obs, method, aux)
                except GradleakError as exc:
                    row.update(accuracy=None, exact=None, error=str(exc))
                else:
                    acc = label_accuracy(est.labels, y, data.num_classes)
                    row.update(accuracy=acc, exact=acc == 1.0, error="")
                row["seconds"] = time.perf_counter() - started
                rows.append(row)
            bar.update(1)
            yield rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean accuracy, its standard error over trials, exact fraction and random baseline per
    (method, batch size). ``accuracy_se`` is ``s / √n`` (sample standard deviation ``s`` over the
    ``n`` trials; None for fewer than two): a ``gradleak labels`` table of 10 trials cannot tell
    0.988 from 0.99."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["batch_size"]), []).append(r)
    out = []
    for (method, b), rs in groups.items():
        ok = [r for r in rs if r["accuracy"] is not None]
        n = len(ok)
        mean = sum(r["accuracy"] for r in ok) / n if n else None
        out.append({
            "method": method, "batch_size": b, "trials": n,
            "accuracy": mean,
            "accuracy_se": math.sqrt(sum((r["accuracy"] - mean) ** 2 for r in ok) / (n - 1) / n) if n > 1 else None,
            "exact": sum(r["exact"] for r in ok) / n if n else None,
            "random_baseline": sum(r["random_baseline"] for r in rs) / len(rs),
        })
    return out


LABEL_COLUMNS = ["method", "batch_size", "trial", "model_seed", "accuracy", "exact", "random_baseline", "seconds",
                 "error"]


def _save_plot(rows: list[dict], out: Path) -> None:
    from ...viz import save_label_accuracy_plot

    save_label_accuracy_plot(out / "labels.png", summarise(rows))


def run_and_write_label_sweep(cfg: LabelSweepConfig, out: Path, progress: bool = True) -> list[dict]:
    """:func:`run_label_sweep`, appending each batch's rows to ``out/labels.csv`` as they are measured.

    ``out/config.json`` records the settings (victim, initialisation, data) the rows were measured with.
    Nothing is written until the sweep has validated its settings and set up its data and model. A
    sweep that then stops (an error, Ctrl-C) writes the plot of what it measured and re-raises with a
    note saying where; one that is killed still leaves every finished batch in the CSV.
    """
    batches = iter_label_sweep(cfg, progress)
    first = next(batches, None)
    rows: list[dict] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        with (out / "labels.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
            writer.writeheader()
            for batch_rows in itertools.chain([first] if first is not None else [], batches):
                writer.writerows(batch_rows)
                fh.flush()
                rows.extend(batch_rows)
    except BaseException as exc:
        if rows:
            _save_plot(rows, out)
            add_note(exc, f"stopped; the {len(rows)} rows measured so far are in {out}/labels.csv and labels.png")
        raise
    _save_plot(rows, out)  # the CSV is complete: every batch was appended as it came
    return rows
