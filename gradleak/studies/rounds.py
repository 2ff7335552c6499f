"""Several rounds against one client: aggregation of semantic evidence and label-map recovery.

The client holds one private batch and answers every round with its update under the current
global model; the global model trains on public data between rounds. Per round the attacker
reconstructs and labels the batch; across rounds it pools the evidence (the seed, Malcewicz et
al. 2025: aggregation improves label recovery) and, not knowing which output index means which
class name, solves the index → name map from (recovered index, labeller distribution) pairs.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import AttackConfig
from ..errors import ConfigError
from ..metrics import label_accuracy, random_baseline
from ..models.train import train_victim
from .attack import attack_observation
from .checks import check_inputs
from .client import client_update, observe, prepare_client, set_client_mode
from .evaluate import evaluate_outcome
from .side import AttackerSide


@dataclass
class RoundsConfig:
    attack: AttackConfig = field(default_factory=AttackConfig)
    rounds: int = 5
    steps_per_round: int = 20  # SGD steps of the global model on public data between rounds


def run_rounds(cfg: RoundsConfig, out_dir: str | Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Attack one client over ``cfg.rounds`` rounds; one row of metrics per round."""
    from ..semantic import (LabelMapEvidence, aggregate_counts, aggregate_probabilities, align_rounds,
                            counts_to_labels, label_images, solve_label_map)

    a = check_inputs(cfg.attack)
    if cfg.rounds < 1:
        raise ConfigError("rounds must be at least 1")
    if cfg.steps_per_round < 0:
        raise ConfigError("steps per round must be at least 0")
    if a.semantic.labeler == "none":
        raise ConfigError("rounds measures semantic labels: choose --labeler clip or classifier")
    if a.semantic.class_names is not None:
        raise ConfigError("rounds scores names against the dataset's classes; drop --class-names")
    if any(spec.split(":", 1)[0] == "secagg" for spec in a.client.defense):
        raise ConfigError("rounds follows one client's batch; secure aggregation mixes several: drop secagg")
    client = prepare_client(a, progress)
    data, model, x, y = client.data, client.model, client.images, client.labels
    side = AttackerSide(a, data).build()
    public = side.public
    labeller, names = side.labeller, side.class_names
    truth = [int(t) for t in y]
    b, c = len(truth), data.num_classes
    evidence = LabelMapEvidence(c, len(names))
    images, tables, rows = [], [], []
    original = label_images(labeller, x, names).top1
    for r in tqdm(range(cfg.rounds), disable=not progress, desc="rounds", unit="round"):
        started = time.perf_counter()
        if r:
            train_victim(model, public.images, public.labels, cfg.steps_per_round, data.mean, data.std, seed=a.run.seed + r)
        set_client_mode(model, a.client.client_mode)
        obs = observe(a, model, data, client_update(a, client), b)
        outcome = attack_observation(obs, a.with_options(seed=a.run.seed + r), side, progress=False)
        ev = evaluate_outcome(outcome, x, y, c)
        # The attacker does not know the index → name map: label without the gradient's counts.
        sem = label_images(labeller, outcome.reconstruction.images, names)
        images.append(outcome.reconstruction.images)
        tables.append(sem.probabilities)
        evidence.add_round(outcome.labels, sem.probabilities)
        pooled = counts_to_labels(aggregate_counts(tables, b))
        per_image = aggregate_probabilities(align_rounds(images, tables)).argmax(dim=1).tolist()
        mapping = solve_label_map(evidence)
        seen = sorted(set(int(i) for i in evidence.observations.nonzero().flatten()))
        rows.append({
            "round": r + 1,
            "label_accuracy": ev["label_accuracy"],
            "ssim": ev["ssim"],
            "semantic_accuracy": label_accuracy(sem.top1, truth),
            "semantic_accuracy_aggregated": label_accuracy(per_image, truth),
            "pooled_semantic_accuracy": label_accuracy(pooled, truth),
            "label_map_accuracy": sum(mapping[i] == i for i in seen) / len(seen),
            "label_map_indices_seen": len(seen),
            "original_semantic_accuracy": label_accuracy(original, truth),
            "random_baseline": random_baseline(truth, c),
            "seconds": time.perf_counter() - started,
        })
        if out_dir is not None:
            _write(Path(out_dir), rows, cfg)
    return rows


def _write(out: Path, rows: list[dict[str, Any]], cfg: RoundsConfig) -> None:
    from ..io import atomic_write, write_json
    from ..viz import save_rounds_plot

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "rounds.csv", buffer.getvalue())
    save_rounds_plot(out / "rounds.png", rows)
    write_json(out / "rounds.json", {"config": cfg.attack.to_dict(), "rounds": cfg.rounds,
                                     "steps_per_round": cfg.steps_per_round, "per_round": rows})
