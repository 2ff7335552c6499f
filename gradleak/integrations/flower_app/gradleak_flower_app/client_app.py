"""An ordinary PyTorch client: local SGD on its private batch (:func:`.task.local_sgd`), weights back to the server.

Nothing here knows about gradleak's attack. The one demo-only line writes the private batch
to ``truth-dir`` so that the evaluator can score what the server recovered. Flower's own privacy
mods (``flower-dp``, ``flower-secagg`` in the run config) wrap the train function (``privacy_mod``).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from gradleak.integrations.capture import write_ground_truth
from gradleak.integrations.flower_privacy import privacy_mod
from gradleak.integrations.weights import load_weights

from .task import client_batch, local_sgd, normalize, option, task_spec

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    return int(context.node_config.get("partition-id", 0)), int(context.node_config.get("num-partitions", 1))


def _received_model(msg: Message, context: Context):
    """The run config, the task and the global model the server sent."""
    rc = context.run_config
    spec = task_spec(rc)
    model = spec.build_model()
    # By name; by position when the arrays are unnamed (Flower's legacy Parameters, under SecAgg+).
    load_weights(model, {k: v.numpy() for k, v in msg.content["arrays"].items()}, with_buffers=True)
    return rc, spec, model


@app.train(mods=[privacy_mod])
def train(msg: Message, context: Context) -> Message:
    rc, spec, model = _received_model(msg, context)
    config = msg.content["config"]
    server_round, lr = int(config["server-round"]), float(config["lr"])
    pid, parts = _partition(context)
    x, y = client_batch(str(rc["dataset"]), pid, parts, server_round, int(rc["batch-size"]), int(rc["seed"]),
                        option(rc, "data-dir"))

    # The train config gives local-steps or local-epochs, and local-batch-size (0 or absent: the whole batch).
    b = int(config.get("local-batch-size", 0)) or len(x)
    steps = int(config["local-steps"]) if "local-steps" in config else int(config["local-epochs"]) * -(-len(x) // b)
    shuffle = torch.Generator().manual_seed(7_919 * int(rc["seed"]) + 104_729 * pid + server_round)  # private
    model.train()  # the server's attack config says so too (client_mode train, task.attack_config)
    loss = local_sgd(model, normalize(x, spec), y, lr, steps, b, shuffle)

    if rc.get("truth-dir"):  # demo only: the evaluator's side channel, never the attacker's
        write_ground_truth(str(rc["truth-dir"]), server_round, context.node_id, x, y)
    content = RecordDict({
        "arrays": ArrayRecord(model.state_dict()),
        "metrics": MetricRecord({"train-loss": float(loss), "num-examples": len(x)}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    rc, spec, model = _received_model(msg, context)
    pid, parts = _partition(context)
    x, y = client_batch(str(rc["dataset"]), pid, parts, 0, 64, int(rc["seed"]), option(rc, "data-dir"), split="test")
    model.eval()
    with torch.no_grad():
        logits = model(normalize(x, spec))
    metrics = {"eval-loss": float(torch.nn.functional.cross_entropy(logits, y)),
               "eval-acc": float((logits.argmax(1) == y).float().mean()), "num-examples": len(x)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
