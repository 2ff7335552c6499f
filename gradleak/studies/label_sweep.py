"""Label-recovery sweeps: every strategy × batch size × trial on real batches, one row per run.

The victim, data, client update and label side knowledge come from the same
:class:`~gradleak.config.AttackConfig` as ``gradleak attack``; the sweep adds the batch sizes,
trials, strategies and model initialisations.
"""

from __future__ import annotations

import collections
import csv
import io
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..config import AttackConfig, validate
from ..data import load_dataset
from ..errors import ConfigError, GradleakError, add_note, is_int_at_least
from ..metrics import label_accuracy, random_baseline
from ..threat import simulate_client
from .client import build_victim, observe, update_config
from .side import AttackerSide

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
LABEL_COLUMNS = ["method", "batch_size", "trial", "model_seed", "accuracy", "exact", "random_baseline", "seconds",
                 "error"]


@dataclass
class LabelSweepConfig:
    attack: AttackConfig = field(default_factory=AttackConfig)  # data, victim, client update, label_aux, seed
    batch_sizes: Sequence[int] = BATCH_SIZES
    trials: int = 10
    methods: Sequence[str] = ("all",)
    # Model initialisations (seeds seed, seed + 1, …); trial t attacks init t mod inits. Untrained
    # LeNet's accuracy at one B differs by up to 0.03 between inits: one init is not "LeNet".
    inits: int = 1

    @classmethod
    def of(cls, batch_sizes: Sequence[int] = BATCH_SIZES, trials: int = 10, methods: Sequence[str] = ("all",),
           inits: int = 1, **options: Any) -> "LabelSweepConfig":
        """``LabelSweepConfig.of(batch_sizes=[1, 8], trials=3, dataset="digits", client_mode="train")``:
        the sweep's own settings plus flat attack options."""
        return cls(AttackConfig.of(**options), list(batch_sizes), trials, list(methods), inits)

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack.to_dict(), "batch_sizes": list(self.batch_sizes), "trials": self.trials,
                "methods": list(self.methods), "inits": self.inits}

    def resolved_methods(self) -> list[str]:
        from ..attacks.labels import LABEL_STRATEGIES

        methods = list(LABEL_STRATEGIES.names()) if list(self.methods) == ["all"] else list(self.methods)
        for m in methods:
            LABEL_STRATEGIES.get(m)  # unknown names fail before any work
        return methods

    def validate(self) -> None:
        validate(self.attack)
        self.resolved_methods()
        for name in ("trials", "inits"):
            if not is_int_at_least(getattr(self, name), 1):
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.batch_sizes:
            raise ConfigError("no batch sizes to sweep")
        bad = [b for b in self.batch_sizes if not is_int_at_least(b, 1)]
        if bad:
            raise ConfigError(f"batch sizes must be positive integers, got {bad}")


def run_label_sweep(cfg: LabelSweepConfig, progress: bool = True) -> list[dict]:
    """Rows ``method, batch_size, trial, model_seed, accuracy, exact, random_baseline, seconds`` (plus
    ``error`` where a method does not apply, e.g. iDLG at B > 1)."""
    return [row for batch in iter_label_sweep(cfg, progress) for row in batch]


def iter_label_sweep(cfg: LabelSweepConfig, progress: bool = True,
                     done: set[tuple[int, int]] = frozenset()) -> Iterator[list[dict]]:
    """The rows of :func:`run_label_sweep`, one batch (every method) at a time, as they are measured.
    Batches whose ``(batch_size, trial)`` is in ``done`` are drawn (the sampling stays the same) but
    not measured."""
    from ..attacks.labels import recover_labels

    cfg.validate()
    methods = cfg.resolved_methods()
    a = cfg.attack
    data = load_dataset(a.data.dataset, a.data.split, a.data.data_dir)
    too_big = [b for b in cfg.batch_sizes if b > len(data)]
    if too_big:
        raise ConfigError(f"batch sizes {too_big} do not fit the {len(data)} images of {a.data.dataset} {a.data.split}")
    side = AttackerSide(a, data)
    public = side.public if a.victim.trained_steps or a.recovery.label_aux == "public" else None
    aux = side.label_aux()
    seed = a.run.seed
    # models[i] has seed seed + i; no more than the trials can reach
    models = [build_victim(a, data, s, public=public) for s in range(seed, seed + min(cfg.inits, cfg.trials))]
    todo = len(cfg.batch_sizes) * cfg.trials - len(done)
    gen = torch.Generator().manual_seed(seed)
    with tqdm(total=todo, disable=not progress, desc="label recovery", unit="batch") as bar:
        for b in cfg.batch_sizes:
            for trial in range(cfg.trials):
                model = models[trial % len(models)]
                x, y, _ = data.sample_batch(b, gen)
                if (b, trial) in done:
                    continue
                update = simulate_client(model, x, y, update_config(a), data.mean, data.std)
                obs = observe(a, model, data, update, b)
                baseline = random_baseline(y, data.num_classes)
                rows = []
                for method in methods:
                    started = time.perf_counter()
                    row = {"method": method, "batch_size": b, "trial": trial, "model_seed": seed + trial % len(models),
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
    """Mean accuracy, its standard error over trials (``s / √n``; None for fewer than two), exact
    fraction and random baseline per (method, batch size)."""
    from ..metrics.intervals import stat

    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["batch_size"]), []).append(r)
    out = []
    for (method, b), rs in groups.items():
        ok = [r for r in rs if r["accuracy"] is not None]
        s = stat(r["accuracy"] for r in ok)
        out.append({
            "method": method, "batch_size": b, "trials": len(ok),
            "accuracy": s.mean if s else None,
            "accuracy_se": s.se if s and len(ok) > 1 else None,
            "exact": sum(r["exact"] for r in ok) / len(ok) if ok else None,
            "random_baseline": sum(r["random_baseline"] for r in rs) / len(rs),
        })
    return out


def _read_rows(path: Path) -> list[dict]:
    def parse(row: dict) -> dict:
        acc = row["accuracy"]
        return {**row, "batch_size": int(row["batch_size"]), "trial": int(row["trial"]),
                "model_seed": int(row["model_seed"]), "accuracy": float(acc) if acc else None,
                "exact": row["exact"] == "True" if row["exact"] else None,
                "random_baseline": float(row["random_baseline"]), "seconds": float(row["seconds"])}

    with path.open(newline="") as fh:
        return [parse(r) for r in csv.DictReader(fh)]


def run_and_write_label_sweep(cfg: LabelSweepConfig, out: Path, progress: bool = True,
                              overwrite: bool = False) -> list[dict]:
    """:func:`run_label_sweep`, appending each batch's rows to ``out/labels.csv`` as they are measured.

    ``out/config.json`` records the settings. A folder holding the same sweep resumes: the batches
    in ``labels.csv`` are kept and only the rest are measured. A folder holding another sweep (or
    other files) is refused unless ``overwrite``. A sweep that stops (an error, Ctrl-C) writes the
    plot of what it measured and re-raises with a note saying where; one that is killed still leaves
    every finished batch in the CSV.
    """
    from ..io import atomic_write, write_json
    from .outputs import prepare_output

    cfg.validate()
    settings = cfg.to_dict()
    rows: list[dict] = []
    csv_path, cfg_path = out / "labels.csv", out / "config.json"
    resuming = (not overwrite and cfg_path.is_file() and csv_path.is_file()
                and json.loads(cfg_path.read_text()) == json.loads(json.dumps(settings)))
    if resuming:
        rows = _read_rows(csv_path)
        per_batch = collections.Counter((r["batch_size"], r["trial"]) for r in rows)
        complete = {batch for batch, n in per_batch.items() if n == len(cfg.resolved_methods())}
        rows = [r for r in rows if (r["batch_size"], r["trial"]) in complete]
    else:
        complete = set()
    batches = iter_label_sweep(cfg, progress, complete)
    first = next(batches, None)  # validates, loads data and builds the models before anything is written
    if not resuming:
        prepare_output(out, overwrite)
        write_json(cfg_path, settings)
    # The CSV restarts from its complete batches (a killed run may have left half of one).
    atomic_write(csv_path, _csv_text(rows))
    try:
        with csv_path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
            for batch_rows in itertools.chain([first] if first is not None else [], batches):
                writer.writerows(batch_rows)
                fh.flush()
                rows.extend(batch_rows)
    except BaseException as exc:
        if rows:
            _save_plot(rows, out)
            add_note(exc, f"stopped; the {len(rows)} rows measured so far are in {out}/labels.csv and labels.png")
        raise
    _save_plot(rows, out)
    return _in_sweep_order(rows, cfg)


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LABEL_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _in_sweep_order(rows: list[dict], cfg: LabelSweepConfig) -> list[dict]:
    position = {b: i for i, b in enumerate(cfg.batch_sizes)}
    return sorted(rows, key=lambda r: (position[r["batch_size"]], r["trial"]))


def _save_plot(rows: list[dict], out: Path) -> None:
    from ..viz import save_label_accuracy_plot

    save_label_accuracy_plot(out / "labels.png", summarise(rows))
