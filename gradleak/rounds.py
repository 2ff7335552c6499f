"""Several rounds against one client: aggregation of semantic evidence and label-map recovery.

The client holds one private batch and answers every round with its update under the current
global model; the global model trains on public data between rounds. Per round the attacker
reconstructs and labels the batch; across rounds it pools the evidence (the seed, Malcewicz et
al. 2025: aggregation improves label recovery) and, not knowing which output index means which
class name, solves the index → name map from (recovered index, labeller distribution) pairs.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import ConfigError
from .pipeline import (
    AttackConfig,
    attack_observation,
    build_semantic_labeller,
    evaluate_outcome,
    prepare_client,
    public_split,
    set_client_mode,
    threat_model,
    write_json,
)
from .threat import UpdateConfig, simulate_client


@dataclass
class RoundsConfig:
    attack: AttackConfig
    rounds: int = 5
    steps_per_round: int = 20  # SGD steps of the global model on public data between rounds


def run_rounds(cfg: RoundsConfig, out_dir: str | Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Attack one client over ``cfg.rounds`` rounds; one row of metrics per round."""
    from .data import load_dataset
    from .metrics import label_accuracy, random_baseline
    from .models.train import train_victim
    from .semantic import (
        LabelMapEvidence,
        aggregate_counts,
        aggregate_probabilities,
        align_rounds,
        counts_to_labels,
        label_images,
        solve_label_map,
    )

    a = cfg.attack
    if cfg.rounds < 1:
        raise ConfigError("rounds must be at least 1")
    if a.labeler == "none":
        raise ConfigError("rounds measures semantic labels: choose --labeler clip or classifier")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    data, model, x, y, _ = prepare_client(a, progress)
    public = load_dataset(a.dataset, public_split(a.split), a.data_dir)
    labeller, names = build_semantic_labeller(a, data)
    if names != list(data.class_names):
        raise ConfigError("rounds scores names against the dataset's classes; drop --class-names")
    truth = [int(t) for t in y]
    b, c = len(truth), data.num_classes
    evidence = LabelMapEvidence(c, len(names))
    images, tables, rows = [], [], []
    original = label_images(labeller, x, names).top1
    for r in tqdm(range(cfg.rounds), disable=not progress, desc="rounds", unit="round"):
        started = time.perf_counter()
        if r:
            train_victim(model, public.images, public.labels, cfg.steps_per_round, data.mean, data.std, seed=a.seed + r)
        set_client_mode(model, a.client_mode)
        update = simulate_client(model, x, y, UpdateConfig(a.update, a.local_steps, a.local_lr, a.local_batch_size),
                                 data.mean, data.std)
        obs = threat_model(a).observe(model, update, data.input_shape, c, data.mean, data.std, batch_size=b)
        outcome = attack_observation(obs, replace(a, seed=a.seed + r), progress=False, public=public)
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
            "aggregated_semantic_accuracy": label_accuracy(per_image, truth),
            "pooled_semantic_accuracy": label_accuracy(pooled, truth),
            "label_map_accuracy": sum(mapping[i] == i for i in seen) / len(seen),
            "label_map_indices_seen": len(seen),
            "original_semantic_accuracy": label_accuracy(original, truth),
            "random_baseline": random_baseline(truth, c),
            "seconds": time.perf_counter() - started,
        })
        if out is not None:
            _write(out, rows, a, cfg)
    return rows


def _write(out: Path, rows: list[dict[str, Any]], a: AttackConfig, cfg: RoundsConfig) -> None:
    from .viz import save_rounds_plot

    tmp = out / "rounds.csv.tmp"
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "rounds.csv")
    save_rounds_plot(out / "rounds.png", rows)
    write_json(out / "rounds.json", {"config": a.to_dict(), "rounds": cfg.rounds,
                                      "steps_per_round": cfg.steps_per_round, "per_round": rows})
