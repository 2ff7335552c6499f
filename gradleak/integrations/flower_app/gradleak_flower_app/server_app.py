"""A FedAvg server that also eavesdrops: every client update is attacked off the round's path.

The only change from a plain Flower ServerApp is ``eavesdrop(FedAvg(...), ...)`` around the
strategy and ``eavesdropper.close(...)`` at the end. The attack's options come from the run
config under gradleak's own option names (``task.attack_config``).
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from gradleak.integrations.capture import GroundTruthFolder
from gradleak.integrations.eavesdropper import EavesdropConfig, store_sinks
from gradleak.integrations.flower import eavesdrop
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
                             isolation=str(rc["attack-isolation"]), save_captures=bool(rc["save-captures"]))
    # Evaluator only: the demo clients leave their private batch here; the attack never reads it.
    truth = GroundTruthFolder(Path(str(rc["truth-dir"]))) if rc.get("truth-dir") else None
    strategy = eavesdrop(
        FedAvg(fraction_train=1.0, fraction_evaluate=float(rc["fraction-evaluate"]),
               min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes),
        spec, config, ground_truth=truth, sinks=store_sinks(str(rc.get("store") or ""), run_tag=str(context.run_id)),
    )
    initial = build_model(spec.model, spec.input_shape, spec.num_classes, spec.width, seed=cfg.run.seed,
                          init=cfg.victim.init)
    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial.state_dict()),
            num_rounds=int(rc["num-server-rounds"]),
            # The keys the clients read, and the eavesdropper's LocalSchedule reads back.
            train_config=ConfigRecord({"lr": cfg.client.local_lr, "local-steps": cfg.client.local_steps}),
        )
    finally:
        # The rounds are over; give queued attacks their time, then report.
        drain = float(rc["drain-timeout"])
        if float(rc["drain-deadline"]) > 0:  # a wall-clock deadline from whoever launched the run
            drain = max(0.0, min(drain, float(rc["drain-deadline"]) - time.time()))
        records = strategy.eavesdropper.close(timeout_s=drain)
    for r in sorted(records, key=lambda r: (r.server_round, r.node_id)):
        print(f"[gradleak] round {r.server_round} node {r.node_id}: {r.status} "
              f"labels {r.recovered_labels} (true {r.true_labels}) ssim {r.ssim}", flush=True)
