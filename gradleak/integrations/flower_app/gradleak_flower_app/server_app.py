"""A FedAvg server that also eavesdrops: every client update is attacked off the round's path.

The only change from a plain Flower ServerApp is an ``EavesdroppingStrategy`` around the
strategy and ``eavesdropper.close(...)`` at the end. The attack's options come from the run
config under gradleak's own option names (``task.attack_config``). Flower's own privacy features
(``flower-dp``, ``flower-secagg``) wrap FedAvg inside the eavesdropper, so that it reads what the
server receives; under SecAgg+ the rounds run in Flower's legacy workflow and it reads the aggregate
(``gradleak.integrations.flower_privacy``).
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from gradleak.integrations.capture import GroundTruthFolder
from gradleak.integrations.eavesdropper import EavesdropConfig, Eavesdropper, store_sinks
from gradleak.integrations.flower import EavesdroppingStrategy
from gradleak.integrations.flower_privacy import run_secure_aggregation, with_central_dp
from gradleak.integrations.privacy import FlowerPrivacy, MembersGroundTruth
from gradleak.models import build_model

from .task import attack_config, task_spec

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    cfg = attack_config(rc)
    spec = task_spec(rc)
    nodes = int(rc["min-nodes"])
    out_dir = Path(str(rc["out-dir"])) if rc.get("out-dir") else None
    config = EavesdropConfig(attack=cfg, timeout_s=float(rc["attack-timeout"]),
                             max_pending=int(rc["max-pending"]), out_dir=out_dir,
                             isolation=str(rc["attack-isolation"]), save_captures=bool(rc["save-captures"]),
                             first_round=int(rc.get("attack-from-round", 1)))
    # Evaluator only: the demo clients leave their private batch here; the attack never reads it.
    truth = GroundTruthFolder(Path(str(rc["truth-dir"]))) if rc.get("truth-dir") else None
    eavesdropper = Eavesdropper(spec, config, MembersGroundTruth(truth) if truth is not None else None,
                                store_sinks(str(rc.get("store") or ""), run_tag=str(context.run_id)))
    privacy = FlowerPrivacy.from_run_config(rc)
    initial = build_model(spec.model, spec.input_shape, spec.num_classes, spec.width, seed=cfg.run.seed,
                          init=cfg.victim.init)
    # The keys the clients read, and the eavesdropper's LocalSchedule reads back: lr, the local
    # mini-batch (0: the whole batch) and local epochs or steps (K = epochs · ⌈B/b⌉).
    train_config = {"lr": cfg.client.local_lr, "local-batch-size": cfg.client.local_batch_size or 0}
    epochs = int(rc.get("local-epochs", 0) or 0)
    train_config.update({"local-epochs": epochs} if epochs else {"local-steps": cfg.client.local_steps})
    try:
        if privacy.aggregate_only:  # SecAgg+: Flower's legacy workflow; the server holds only the aggregate
            run_secure_aggregation(grid, context, privacy, eavesdropper,
                                   [v.numpy() for v in initial.state_dict().values()],
                                   int(rc["num-server-rounds"]), nodes, train_config)
        else:  # the DP wrapper sits inside the eavesdropper: it reads each reply as the server receives it
            strategy = EavesdroppingStrategy(with_central_dp(
                FedAvg(fraction_train=1.0, fraction_evaluate=float(rc["fraction-evaluate"]),
                       min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes),
                privacy, nodes), eavesdropper, observed=privacy.observed(nodes))
            strategy.start(grid=grid, initial_arrays=ArrayRecord(initial.state_dict()),
                           num_rounds=int(rc["num-server-rounds"]), train_config=ConfigRecord(train_config))
    finally:
        # The rounds are over; give queued attacks their time, then report.
        drain = float(rc["drain-timeout"])
        if float(rc["drain-deadline"]) > 0:  # a wall-clock deadline from whoever launched the run
            drain = max(0.0, min(drain, float(rc["drain-deadline"]) - time.time()))
        records = eavesdropper.close(timeout_s=drain)
    for r in sorted(records, key=lambda r: (r.server_round, r.node_id)):
        print(f"[gradleak] round {r.server_round} node {r.node_id} ({r.observed}): {r.status} "
              f"labels {r.recovered_labels} (true {r.true_labels}) ssim {r.ssim}", flush=True)
