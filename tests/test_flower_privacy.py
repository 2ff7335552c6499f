"""Flower's own privacy features (DP wrappers and mods, SecAgg+) under the eavesdropper: the
eavesdropper reads exactly what the server receives, and says what that is."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gradleak.errors import ConfigError
from gradleak.models import build_model
from gradleak.threat import fedsgd_gradient

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_APP = REPO / "gradleak" / "integrations" / "flower_app"
MEAN, STD = (0.3051,), (0.3759,)


# -- framework-free: the specs, what the server observes, the aggregate's ground truth ----------


def test_privacy_specs_parse_with_defaults_and_refuse_bad_input_in_one_line():
    from gradleak.integrations.privacy import FlowerPrivacy

    p = FlowerPrivacy.parse("client-fixed:C=0.5")
    assert (p.dp, dict(p.dp_params), p.aggregate_only) == ("client-fixed", {"C": 0.5, "sigma": 1.0}, False)
    assert p.observed(2) == "individual reply, clipped by the client to ‖Δ‖ ≤ 0.5"
    assert "fixedclipping_mod" in p.describe()
    assert FlowerPrivacy.parse("server-fixed:C=1,sigma=0").observed(3).startswith("individual reply, raw")
    s = FlowerPrivacy.parse("none", "secagg+:max_weight=8")
    assert s.aggregate_only and s.observed(3) == "aggregate of 3 clients"
    assert dict(s.secagg_params) == {"shares": 1.0, "threshold": 0.5, "max_weight": 8.0, "clip": 8.0}
    # LocalDpMod's σ = s·√(2 ln(1.25/δ))/ε: 2·√(2 ln(1.25e5))/10 = 0.96897…
    local = FlowerPrivacy.parse("local:C=1,epsilon=10,sensitivity=2")
    assert local.local_noise_std() == pytest.approx(2 * math.sqrt(2 * math.log(1.25e5)) / 10)
    assert abs(local.local_noise_std() - 0.96897) < 1e-4
    assert FlowerPrivacy.from_run_config({"flower-dp": "local:C=1,epsilon=10,sensitivity=2"}) == local
    assert FlowerPrivacy.from_run_config({}) == FlowerPrivacy.parse()

    for dp, secagg, match in [("client-fixed", "none", "needs C"), ("gauss", "none", "unknown Flower DP"),
                              ("client-fixed:C=0", "none", "C must be > 0"), ("local:C=1,eps=3", "none", "'eps=3'"),
                              ("server-fixed:C=x", "none", "must be a number"),
                              ("none", "secagg+:shares=2", "shares must be"),
                              ("client-fixed:C=1", "secagg+", "one of them at a time")]:
        with pytest.raises(ConfigError, match=match) as exc:
            FlowerPrivacy.parse(dp, secagg)
        assert "\n" not in str(exc.value)


def test_aggregate_ground_truth_is_every_members_batch():
    from gradleak.integrations.capture import CapturedUpdate
    from gradleak.integrations.privacy import MembersGroundTruth

    batches = {7: (torch.zeros(2, 1, 8, 8), torch.tensor([1, 2])), 9: (torch.ones(3, 1, 8, 8), torch.tensor([3, 4, 5]))}
    truth = MembersGroundTruth(lambda c: batches.get(c.node_id))
    one = CapturedUpdate(1, 9, {}, {})
    assert truth(one)[1].tolist() == [3, 4, 5]
    x, y = truth(CapturedUpdate(1, 0, {}, {}, members=(7, 9)))
    assert y.tolist() == [1, 2, 3, 4, 5] and x.shape == (5, 1, 8, 8) and x[2:].eq(1).all()
    assert truth(CapturedUpdate(1, 0, {}, {}, members=(7, 8))) is None  # one member's batch unknown: unscored


def test_demo_config_hands_the_features_to_the_app_and_refuses_secagg_alone():
    import tomllib

    from gradleak.integrations.flower_demo import FlowerDemoConfig, demo_run_config
    from gradleak.integrations.privacy import FlowerPrivacy

    declared = tomllib.loads((EXAMPLE_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert FlowerPrivacy.from_run_config(declared) == FlowerPrivacy()  # the app's defaults: off
    cfg = FlowerDemoConfig(flower_dp="local:C=1,epsilon=10")
    cfg.validate()
    rc = demo_run_config(cfg, 0.0)
    assert set(rc) <= set(declared) and FlowerPrivacy.from_run_config(rc) == cfg.privacy
    assert cfg.to_dict()["flower_dp"] == "local:C=1,epsilon=10"
    with pytest.raises(ConfigError, match="at least 2 clients"):
        FlowerDemoConfig(clients=1, flower_secagg="secagg+").validate()
    with pytest.raises(ConfigError, match="needs C"):
        FlowerDemoConfig(flower_dp="server-fixed").validate()


def test_flower_demo_cli_passes_the_features_on(tmp_path, monkeypatch, cli):
    pytest.importorskip("flwr")
    import gradleak.integrations.flower_demo as demo

    seen = []
    monkeypatch.setattr(demo, "run_flower_demo", lambda cfg: seen.append(cfg) or demo.FlowerDemoResult(cfg, []))
    code, out, err = cli(["flower-demo", "--flower-secagg", "secagg+", "-o", str(tmp_path / "o")])
    assert code == 0, err
    assert seen[0].privacy.aggregate_only and "the server observes: aggregate of 2 clients" in out
    code, _, err = cli(["flower-demo", "--flower-dp", "client-fixed:C=-1", "-o", str(tmp_path / "p")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "C must be > 0" in err


# -- Flower in-process: mods and strategies ------------------------------------------------------


def _trivial_attack(capture, task, cfg, schedule):
    from gradleak.attacks.inversion import Reconstruction
    from gradleak.studies.attack import AttackOutcome

    b = capture.num_examples()
    labels = torch.zeros(b, dtype=torch.long)
    return AttackOutcome(labels, "none", Reconstruction(torch.zeros(b, 1, 8, 8), labels, 0.0, [0.0], [], 1, 0.0, []), 0.0)


def _eavesdropper():
    from gradleak.integrations.eavesdropper import EavesdropConfig, Eavesdropper
    from gradleak.integrations.weights import TaskSpec

    task = TaskSpec("lenet", (1, 8, 8), 10, MEAN, STD)
    return Eavesdropper(task, EavesdropConfig(isolation="thread", timeout_s=30), attack_fn=_trivial_attack)


def _norm(arrays) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in arrays))


class _Grid:
    def get_node_ids(self):
        return [11, 22]


def test_server_side_dp_clips_after_the_eavesdropper_has_read_the_raw_reply(flower_task_identity):
    """Known answer: with server-side clipping (σ=0) the aggregate moves by at most C, while the
    eavesdropper captured each reply's raw update, larger than C."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    from gradleak.integrations.flower import EavesdroppingStrategy
    from gradleak.integrations.flower_privacy import with_central_dp
    from gradleak.integrations.privacy import FlowerPrivacy

    privacy = FlowerPrivacy.parse("server-fixed:C=0.01,sigma=0")
    eaves = _eavesdropper()
    strategy = EavesdroppingStrategy(with_central_dp(FedAvg(min_available_nodes=2, min_train_nodes=2), privacy, 2),
                                     eaves, observed=privacy.observed(2))
    model = build_model("lenet", (1, 8, 8), 10, seed=1)
    theta = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    messages = list(strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord({"lr": 0.1}), _Grid()))
    gen = torch.Generator().manual_seed(0)
    raw, replies = {}, []
    for msg in messages:
        moved = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
        raw[int(msg.metadata.dst_node_id)] = _norm([moved[k].numpy() - theta[k] for k in theta])
        replies.append(Message(content=RecordDict({"arrays": ArrayRecord(moved),
                                                   "metrics": MetricRecord({"num-examples": 4})}), reply_to=msg))
    arrays, _ = strategy.aggregate_train(1, replies)
    records = {r.node_id: r for r in eaves.close(timeout_s=30)}
    assert _norm([arrays[k].numpy() - theta[k] for k in theta]) <= 0.01 + 1e-6  # the server's clipped mean
    assert set(records) == {11, 22} and all(r.status == "done" for r in records.values())
    assert all(raw[n] > 1.0 for n in raw)  # what the eavesdropper was handed: the raw replies, ≫ C
    assert all(r.observed.startswith("individual reply, raw") for r in records.values())


def test_client_mods_clip_the_reply_to_c_and_translate_legacy_fit_messages(flower_task_identity):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    import flwr.compat.common.recorddict_compat as compat

    from gradleak.integrations.flower_privacy import legacy_fit_mod, privacy_mod

    model = build_model("lenet", (1, 8, 8), 10, seed=2)
    state = model.state_dict()
    sent = RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"lr": 0.1, "clipping_norm": 0.02})})

    def train(msg, ctxt):  # a client whose update has norm ≫ C
        back = {k: v + 1.0 for k, v in msg.content["arrays"].to_torch_state_dict().items()}
        return Message(RecordDict({"arrays": ArrayRecord(back), "metrics": MetricRecord({"num-examples": 4})}),
                       reply_to=msg)

    ctxt = Context(1, 5, {}, RecordDict(), {"flower-dp": "client-fixed:C=0.02"})
    reply = privacy_mod(Message(sent, 5, "train"), ctxt, train)
    back = reply.content["arrays"]
    assert _norm([back[k].numpy() - state[k].numpy() for k in state]) == pytest.approx(0.02, rel=1e-4)
    plain = privacy_mod(Message(sent, 5, "train"), Context(1, 5, {}, RecordDict(), {}), train)
    assert _norm([plain.content["arrays"][k].numpy() - state[k].numpy() for k in state]) > 10

    # SecAgg+'s legacy FitIns in, the app's {"arrays" by position, "config"}, FitRes back.
    arrays = [v.numpy() for v in state.values()]
    legacy = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(arrays), {"lr": 0.1, "server-round": 3}), True)
    seen = {}

    def app_train(msg, ctxt):
        seen["keys"], seen["config"] = list(msg.content["arrays"].keys()), dict(msg.content["config"])
        return train(msg, ctxt)

    out = legacy_fit_mod(Message(legacy, 5, "train"), ctxt, app_train)
    fitres = compat.recorddict_to_fitres(out.content, True)
    assert seen["keys"] == [str(i) for i in range(len(arrays))] and seen["config"]["server-round"] == 3
    assert fitres.num_examples == 4 and fitres.metrics["num-examples"] == 4
    for got, want in zip(parameters_to_ndarrays(fitres.parameters), arrays):
        np.testing.assert_allclose(got, want + 1.0)


def test_secagg_eavesdropper_captures_only_the_aggregate_and_says_so():
    pytest.importorskip("flwr")
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    from gradleak.integrations.flower_privacy import SecAggEavesdroppingStrategy

    class Proxy:
        def __init__(self, node_id):
            self.node_id = node_id

    class Manager:
        def num_available(self):
            return 2

        def sample(self, num_clients, min_num_clients=None, criterion=None):
            return [Proxy(11), Proxy(22)]

    model = build_model("lenet", (1, 8, 8), 10, seed=1)
    theta = [v.numpy().copy() for v in model.state_dict().values()]
    aggregate = [a + 0.5 for a in theta]
    eaves = _eavesdropper()
    fedavg = FedAvg(min_fit_clients=2, min_available_clients=2, on_fit_config_fn=lambda r: {"lr": 0.1, "server-round": r})
    strategy = SecAggEavesdroppingStrategy(fedavg, eaves, "aggregate of 2 clients")
    assert len(strategy.configure_fit(1, ndarrays_to_parameters(theta), Manager())) == 2
    # What SecAggPlusWorkflow hands aggregate_fit after unmasking: every result carries the aggregate.
    results = [(Proxy(n), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(aggregate), 4, {"train-loss": float(n)}))
               for n in (22, 11)]
    params, _ = strategy.aggregate_fit(1, results, [])
    records = eaves.close(timeout_s=30)
    for got, want in zip(parameters_to_ndarrays(params), aggregate):  # aggregation untouched
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert len(records) == 1
    r = records[0]
    assert (r.server_round, r.node_id, r.status, r.num_examples, r.lr) == (1, 0, "done", 8, 0.1)
    assert r.observed == "aggregate of 2 clients; each client's train-loss in the clear"


# -- a real federation with Flower's features on -------------------------------------------------


def _run_app(tmp_path, extra, batch=4, lr=0.1):
    from gradleak.integrations.flower_local import LocalFederation

    out = tmp_path / "out"
    fed = LocalFederation(num_nodes=2, home=tmp_path / "flwr-home", log_dir=tmp_path / "logs", start_timeout_s=90)
    try:
        fed.start()
        outcome = fed.run(EXAMPLE_APP, {
            "num-server-rounds": 1, "min-nodes": 2, "batch-size": batch, "local-lr": lr, "local-steps": 1,
            "iterations": 2, "attack-isolation": "thread", "attack-timeout": 120.0, "drain-timeout": 120.0,
            "out-dir": str(out), "truth-dir": str(tmp_path / "truth"), "save-captures": True, "init": "pytorch",
            **extra,
        }, timeout_s=240)
        assert outcome.ok, (outcome.status, outcome.log.read_text()[-3000:])
    finally:
        fed.close()
    assert fed.processes() == []
    sys.path.insert(0, str(EXAMPLE_APP))
    try:
        from gradleak_flower_app.task import client_batch
    finally:
        sys.path.remove(str(EXAMPLE_APP))
    model = build_model("lenet", (1, 8, 8), 10, init="pytorch")  # the server's initial global model
    true_updates = {}
    for node, part in fed.node_ids.items():
        x, y = client_batch("digits", part, 2, 1, batch)
        true_updates[node] = (y, [-lr * g for g in fedsgd_gradient(model, x, y, MEAN, STD)])
    return out, true_updates


@pytest.mark.slow
def test_real_federation_with_client_side_dp_captures_updates_clipped_to_c(tmp_path):
    """Known answer: with fixedclipping_mod the server receives Δ·C/‖Δ‖ (every true ‖Δ‖ > C here)."""
    pytest.importorskip("flwr")
    from gradleak.integrations.eavesdropper import read_leaks
    from gradleak.threat.io import load_update

    c = 0.02
    out, true_updates = _run_app(tmp_path, {"flower-dp": f"client-fixed:C={c},sigma=1"})
    captures = sorted((out / "captures").glob("*.safetensors"))
    assert len(captures) == 2
    for path in captures:
        cap = load_update(path)
        _, want = true_updates[cap.facts["node_id"]]
        true_norm = _norm([w.numpy() for w in want])
        assert true_norm > 2 * c  # the clipping bites
        assert _norm([d.numpy() for d in cap.update.tensors]) <= c * (1 + 1e-4)
        for d, w in zip(cap.update.tensors, want):  # clipped, direction intact
            torch.testing.assert_close(d, w * (c / true_norm), rtol=1e-3, atol=1e-7)
    leaks = read_leaks(out / "leaks.jsonl")
    assert len(leaks) == 2 and all(r.status == "done" for r in leaks)
    assert all(r.observed == f"individual reply, clipped by the client to ‖Δ‖ ≤ {c:g}" for r in leaks)
    assert all(r.label_accuracy is not None for r in leaks)


@pytest.mark.slow
def test_real_federation_under_secagg_shows_the_server_only_the_aggregate(tmp_path):
    """Known answer: under SecAgg+ the one capture per round is the mean of both clients' updates
    (to SecAgg+'s quantisation: max_weight = 2B makes a client's weight ½, a step of 16/2²² on ½θ')."""
    pytest.importorskip("flwr")
    from gradleak.integrations.eavesdropper import read_leaks
    from gradleak.threat.io import load_update

    out, true_updates = _run_app(tmp_path, {"flower-secagg": "secagg+:max_weight=8"})
    captures = sorted((out / "captures").glob("*.safetensors"))
    assert [p.name for p in captures] == ["round001-node0.safetensors"]  # no capture of any one client
    cap = load_update(captures[0])
    (y1, d1), (y2, d2) = true_updates.values()
    quantum = 2 * (16 / 2**22) / 1.0  # two clients' rounding, over their total weight ½ + ½
    for got, a, b in zip(cap.update.tensors, d1, d2):
        torch.testing.assert_close(got, (a + b) / 2, rtol=0, atol=quantum)
    assert max(float((got - a).abs().max()) for got, a in zip(cap.update.tensors, d1)) > 100 * quantum
    assert cap.facts["batch_size"] == 8
    [leak] = read_leaks(out / "leaks.jsonl")
    assert leak.node_id == 0 and leak.status == "done" and leak.num_examples == 8
    assert leak.observed.startswith("aggregate of 2 clients") and "in the clear" in leak.observed
    assert sorted(leak.true_labels) == sorted(y1.tolist() + y2.tolist())  # scored against all N·B images
