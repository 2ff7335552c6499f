"""The Flower integration: update conversion, the off-path worker, the strategy wrapper, and a
real SuperLink + SuperNodes federation on 127.0.0.1 attacked by its own server."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gradleak.errors import GradleakError, UpdateError
from gradleak.integrations.offpath import OffPathRunner
from gradleak.models import build_model
from gradleak.threat import fedsgd_gradient

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_APP = REPO / "gradleak" / "integrations" / "flower_app"
MEAN, STD = (0.3051,), (0.3759,)


def _sgd_step(model, x, y, lr):
    """θ' after one plain-PyTorch SGD step on the whole batch (what a FedSGD client sends)."""
    client = build_model("lenet", (1, 8, 8), 10)
    client.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(client.parameters(), lr=lr)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(client((x - MEAN[0]) / STD[0]), y).backward()
    opt.step()
    return client.state_dict()


def _digits_batch(labels):
    gen = torch.Generator().manual_seed(7)
    return torch.rand(len(labels), 1, 8, 8, generator=gen), torch.tensor(labels)


# -- update conversion --------------------------------------------------------------------------


def test_update_from_weights_reads_fedsgd_gradient_by_name_and_by_position():
    from gradleak.integrations.weights import update_from_weights

    model = build_model("lenet", (1, 8, 8), 10, seed=3)
    x, y = _digits_batch([1, 5, 5, 9])
    lr = 0.05
    theta = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    theta_prime = {k: v.numpy().copy() for k, v in _sgd_step(model, x, y, lr).items()}
    true_grad = fedsgd_gradient(model, x, y, MEAN, STD)

    by_name = update_from_weights(model, theta, theta_prime, lr=lr, local_steps=1)
    by_position = update_from_weights(model, list(theta.values()), list(theta_prime.values()), lr=lr)
    assert by_name.names == [n for n, _ in model.named_parameters()]
    for got_a, got_b, want in zip(by_name.as_gradient(), by_position.as_gradient(), true_grad):
        torch.testing.assert_close(got_a, want, rtol=1e-3, atol=2e-5)
        torch.testing.assert_close(got_a, got_b)
    # Without the schedule the update reads as −Δ = η g: right direction, wrong scale.
    unscaled = update_from_weights(model, theta, theta_prime, lr=None).as_gradient()
    torch.testing.assert_close(unscaled[0], lr * true_grad[0], rtol=1e-3, atol=1e-6)

    with pytest.raises(UpdateError, match="does not match"):
        update_from_weights(model, list(theta.values())[:-1], list(theta_prime.values())[:-1], lr=lr)


def test_buffers_stay_out_of_the_update_and_load_only_when_asked():
    from gradleak.integrations.weights import load_weights, update_from_weights

    model = build_model("convnet", (1, 8, 8), 10, width=8)
    state = model.state_dict()
    theta = {k: v.numpy().copy() for k, v in state.items()}
    theta["features.1.running_mean"] += 3.0  # the global BN statistics the server sent
    theta_prime = {k: v + 1.0 if v.dtype.kind == "f" else v for k, v in theta.items()}

    update = update_from_weights(model, theta, theta_prime, lr=0.5)
    assert update.names == [n for n, _ in model.named_parameters()]
    assert all(torch.allclose(t, torch.full_like(t, 1.0)) for t in update.tensors)

    without = load_weights(build_model("convnet", (1, 8, 8), 10, width=8), theta, with_buffers=False)
    with_bn = load_weights(build_model("convnet", (1, 8, 8), 10, width=8), theta, with_buffers=True)
    assert torch.equal(without.state_dict()["features.1.running_mean"], torch.zeros_like(state["features.1.running_mean"]))
    assert torch.equal(with_bn.state_dict()["features.1.running_mean"], torch.from_numpy(theta["features.1.running_mean"]))
    assert torch.equal(without.state_dict()["features.0.weight"], torch.from_numpy(theta["features.0.weight"]))


def test_observed_capture_grants_schedule_and_batch_size_but_never_labels():
    from gradleak.attacks.labels import recover_labels
    from gradleak.integrations.capture import CapturedUpdate
    from gradleak.integrations.eavesdropper import observe_capture
    from gradleak.integrations.weights import TaskSpec
    from gradleak.pipeline import AttackConfig

    task = TaskSpec("lenet", (1, 8, 8), 10, MEAN, STD, tuple(str(i) for i in range(10)))
    model = task.build_model()
    x, y = _digits_batch([0, 3, 3, 8])
    theta = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    theta_prime = {k: v.numpy().copy() for k, v in _sgd_step(model, x, y, 0.1).items()}
    capture = CapturedUpdate(2, 17, theta, theta_prime, {"lr": 0.1, "local-steps": 1, "server-round": 2},
                             {"num-examples": 4, "train-loss": 2.3})

    obs = observe_capture(capture, task, AttackConfig())
    assert obs.labels is None and obs.batch_size == 4 and obs.update.lr == 0.1
    for got, want in zip(obs.gradient(), fedsgd_gradient(model, x, y, MEAN, STD)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-5)
    assert sorted(recover_labels(obs).labels.tolist()) == [0, 3, 3, 8]

    hidden = observe_capture(capture, task, AttackConfig(knows_local_schedule=False))
    assert hidden.update.lr is None
    with pytest.raises(GradleakError, match="labels"):
        observe_capture(capture, task, AttackConfig(knows_labels=True))


def test_capture_round_trips_through_npz(tmp_path):
    from gradleak.integrations.capture import CapturedUpdate

    cap = CapturedUpdate(3, 2**63 - 5, {"a": np.arange(6.0).reshape(2, 3)}, {"a": np.ones((2, 3))},
                         {"lr": 0.1}, {"num-examples": 4})
    back = CapturedUpdate.load(cap.save(tmp_path / "c.npz"))
    assert (back.server_round, back.node_id, back.train_config, back.num_examples()) == (3, 2**63 - 5, {"lr": 0.1}, 4)
    np.testing.assert_array_equal(back.global_weights["a"], cap.global_weights["a"])


# -- the off-path worker ------------------------------------------------------------------------


def _boom(message):
    raise ValueError(message)


def test_offpath_never_blocks_skips_when_full_and_records_failures():
    started, release = threading.Event(), threading.Event()
    records = []

    def slow():
        started.set()
        release.wait(30)
        return "slow done"

    runner = OffPathRunner(records.append, workers=1, max_pending=1, timeout_s=60, isolation="thread")
    assert runner.submit("slow", slow)
    assert started.wait(30)
    # The worker is busy and blocked on `release`: submit must still return at once.
    assert runner.submit("boom", _boom, "attack exploded")
    assert not runner.submit("extra", slow)  # the queue (1) is full: skipped, not waited for
    assert not release.is_set() and [r.key for r in records] == ["extra"]
    release.set()
    assert runner.close(timeout_s=30)
    by_key = {r.key: r for r in records}
    assert by_key["slow"].status == "done" and by_key["slow"].result == "slow done"
    assert by_key["boom"].status == "failed" and "ValueError: attack exploded" in by_key["boom"].error
    assert by_key["extra"].status == "skipped" and "queue full" in by_key["extra"].error
    assert not runner.submit("late", slow)
    assert records[-1].status == "skipped"


def test_offpath_process_worker_is_killed_on_timeout_and_replaced():
    records = []
    runner = OffPathRunner(records.append, workers=1, max_pending=4, timeout_s=3, isolation="process",
                           torch_threads=None)
    runner.submit("pid", os.getpid)
    runner.submit("hang", time.sleep, 600)
    runner.submit("pid-again", os.getpid)
    assert runner.close(timeout_s=120)
    by_key = {r.key: r for r in records}
    assert by_key["pid"].status == "done" and by_key["pid"].result != os.getpid()
    assert by_key["hang"].status == "timeout"
    first = by_key["pid"].result
    assert not Path(f"/proc/{first}").exists() or _is_zombie(first)
    assert by_key["pid-again"].status == "done" and by_key["pid-again"].result not in (first, os.getpid())


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


# -- the strategy wrapper -----------------------------------------------------------------------


def _trivial_attack(capture, task, cfg, schedule):
    from gradleak.attacks.inversion import Reconstruction
    from gradleak.pipeline import AttackOutcome

    b = capture.num_examples()
    labels = torch.zeros(b, dtype=torch.long)
    return AttackOutcome(labels, "none", Reconstruction(torch.zeros(b, 1, 8, 8), labels, 0.0, [0.0], [], 1, 0.0, []), 0.0)


def _failing_attack(capture, task, cfg, schedule):
    raise RuntimeError("inversion diverged")


@pytest.fixture
def flower_task_identity(monkeypatch):
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    # Messages need a run identity, which Flower sets inside a real ServerApp process.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class _Grid:
    def get_node_ids(self):
        return [11, 22, 33]


def _round(strategy, model, lr=0.1):
    """One training round through ``strategy`` with three in-process clients; returns aggregation."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    messages = list(strategy.configure_train(1, ArrayRecord(model.state_dict()), ConfigRecord({"lr": lr}), _Grid()))
    replies = []
    for i, msg in enumerate(sorted(messages, key=lambda m: m.metadata.dst_node_id)):
        x, y = _digits_batch([i, i + 1, 2, 7][: 2 + i])
        theta_prime = _sgd_step(model, x, y, lr)
        content = RecordDict({"arrays": ArrayRecord(theta_prime),
                              "metrics": MetricRecord({"num-examples": len(y), "train-loss": float(i)})})
        replies.append(Message(content=content, reply_to=msg))
    return strategy.aggregate_train(1, iter(replies))  # a one-shot iterator, as Flower may pass


@pytest.mark.parametrize("attack_fn", [_trivial_attack, _failing_attack])
def test_wrapped_fedavg_aggregates_exactly_as_fedavg_alone(flower_task_identity, attack_fn):
    from flwr.serverapp.strategy import FedAvg

    from gradleak.integrations.eavesdropper import EavesdropConfig, Eavesdropper
    from gradleak.integrations.flower import EavesdroppingStrategy
    from gradleak.integrations.weights import TaskSpec

    model = build_model("lenet", (1, 8, 8), 10, seed=1)
    task = TaskSpec("lenet", (1, 8, 8), 10, MEAN, STD)
    eaves = Eavesdropper(task, EavesdropConfig(isolation="thread", timeout_s=30), attack_fn=attack_fn)
    wrapped = EavesdroppingStrategy(FedAvg(min_available_nodes=3, min_train_nodes=3), eaves)

    alone_arrays, alone_metrics = _round(FedAvg(min_available_nodes=3, min_train_nodes=3), model)
    arrays, metrics = _round(wrapped, model)
    records = eaves.close(timeout_s=30)

    assert list(arrays) == list(alone_arrays)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k].numpy(), alone_arrays[k].numpy())
    assert dict(metrics) == dict(alone_metrics)
    assert wrapped.weighted_by_key == "num-examples"  # attributes read through to the wrapped strategy
    assert sorted((r.server_round, r.node_id) for r in records) == [(1, 11), (1, 22), (1, 33)]
    assert {r.num_examples for r in records} == {2, 3, 4} and {r.lr for r in records} == {0.1}
    if attack_fn is _failing_attack:
        assert all(r.status == "failed" and "inversion diverged" in r.error for r in records)
    else:
        assert all(r.status == "done" and r.recovered_labels == [0] * r.num_examples for r in records)


def test_eavesdropper_scores_against_ground_truth_and_writes_the_store(tmp_path):
    from gradleak.experiments.store import ResultStore
    from gradleak.integrations.capture import CapturedUpdate, GroundTruthFolder, write_ground_truth
    from gradleak.integrations.eavesdropper import EavesdropConfig, Eavesdropper, read_leaks, store_sinks
    from gradleak.integrations.weights import TaskSpec
    from gradleak.pipeline import AttackConfig

    task = TaskSpec("lenet", (1, 8, 8), 10, MEAN, STD, tuple(str(i) for i in range(10)))
    model = task.build_model()
    x, y = _digits_batch([4, 1, 9])
    theta = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    theta_prime = {k: v.numpy().copy() for k, v in _sgd_step(model, x, y, 0.1).items()}
    write_ground_truth(tmp_path / "truth", 1, 5, x, y)
    config = EavesdropConfig(AttackConfig(iterations=3), isolation="thread", timeout_s=120, out_dir=tmp_path / "out")
    eaves = Eavesdropper(task, config, GroundTruthFolder(tmp_path / "truth", wait_s=0),
                         store_sinks(tmp_path / "out" / "results.sqlite", run_tag="t"))
    eaves.capture(CapturedUpdate(1, 5, theta, theta_prime, {"lr": 0.1}, {"num-examples": 3}))
    eaves.capture(CapturedUpdate(1, 6, theta, theta_prime, {"lr": 0.1}, {"num-examples": 3}))  # no truth file
    records = {r.node_id: r for r in eaves.close(timeout_s=120)}

    scored = records[5]
    assert scored.status == "done" and scored.label_accuracy == 1.0
    assert sorted(scored.recovered_labels) == [1, 4, 9] and scored.true_labels == [4, 1, 9]
    assert Path(scored.grid).is_file() and 0.0 <= scored.ssim <= 1.0
    assert records[6].status == "done" and records[6].label_accuracy is None and Path(records[6].grid).is_file()
    assert [r.node_id for r in read_leaks(tmp_path / "out" / "leaks.jsonl")] == [5, 6]
    with ResultStore(tmp_path / "out" / "results.sqlite", create=False) as store:
        runs = {r.id: r for r in store.runs()}
        row = runs["flower/t/round001/node5"]
        assert row.status == "done" and row.metrics["label_accuracy"] == 1.0 and row.config["batch_size"] == 3
        assert len(store.images("flower/t/round001/node5")) == 3


def test_demo_hands_the_initialisation_to_the_server_app():
    from gradleak.errors import ConfigError
    from gradleak.integrations.flower_demo import FlowerDemoConfig, demo_run_config

    assert demo_run_config(FlowerDemoConfig(), 0.0)["init"] == ""  # the app's default: the model's own
    assert demo_run_config(FlowerDemoConfig(init="pytorch"), 0.0)["init"] == "pytorch"
    with pytest.raises(ConfigError, match="unknown initialisation 'xavier'"):
        FlowerDemoConfig(init="xavier").validate()


def test_missing_flwr_is_one_line_error(monkeypatch, capsys):
    import gradleak.integrations.flower as flower
    from gradleak.cli import main

    monkeypatch.setattr(flower, "HAVE_FLWR", False)
    with pytest.raises(GradleakError, match=r"pip install 'gradleak\[flower\]'"):
        flower.require_flwr()
    with pytest.raises(SystemExit) as exc:
        main(["flower-demo", "--rounds", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gradleak[flower]" in err


# -- a real federation --------------------------------------------------------------------------


@pytest.mark.slow
def test_real_flower_federation_leaks_fedsgd_gradient_and_labels(tmp_path):
    """SuperLink + 2 SuperNodes on 127.0.0.1 run the example app for one FedSGD round.

    The server's captured update must be −lr × the client's true gradient, and the labels it
    recovers must be the client's batch; afterwards no process of the session may be left.
    """
    pytest.importorskip("flwr")
    from gradleak.experiments.store import ResultStore
    from gradleak.integrations.capture import CapturedUpdate, truth_path
    from gradleak.integrations.eavesdropper import read_leaks
    from gradleak.integrations.weights import update_from_weights
    from gradleak.integrations.flower_local import LocalFederation, marked_processes

    sys.path.insert(0, str(EXAMPLE_APP))
    try:
        from gradleak_flower_app.task import client_batch
    finally:
        sys.path.remove(str(EXAMPLE_APP))

    out, truth, lr, batch = tmp_path / "out", tmp_path / "truth", 0.1, 4
    fed = LocalFederation(num_nodes=2, home=tmp_path / "flwr-home", log_dir=tmp_path / "logs", start_timeout_s=90)
    try:
        fed.start()
        outcome = fed.run(EXAMPLE_APP, {
            "num-server-rounds": 1, "min-nodes": 2, "batch-size": batch, "lr": lr, "local-steps": 1,
            "iterations": 2, "attack-isolation": "thread", "attack-timeout": 120.0, "drain-timeout": 120.0,
            "out-dir": str(out), "truth-dir": str(truth), "store": str(out / "results.sqlite"),
            "save-captures": True, "init": "pytorch",
        }, timeout_s=240)
        assert outcome.ok, (outcome.status, outcome.log.read_text()[-3000:])
    finally:
        fed.close()
    assert fed.processes() == [] and marked_processes(fed.session) == []

    model = build_model("lenet", (1, 8, 8), 10, init="pytorch")  # the server's initial global model
    initial = {k: v.numpy() for k, v in model.state_dict().items()}
    batches = [client_batch("digits", p, 2, 1, batch) for p in range(2)]  # what each partition trained on
    captures = sorted((out / "captures").glob("*.npz"))
    assert len(captures) == 2
    for path in captures:
        cap = CapturedUpdate.load(path)
        assert cap.node_id in fed.node_ids
        assert all(np.array_equal(cap.global_weights[k], initial[k]) for k in initial)
        x, y = batches[fed.node_ids[cap.node_id]]
        with np.load(truth_path(truth, 1, cap.node_id)) as written:  # the client's own record agrees
            np.testing.assert_array_equal(written["labels"], y.numpy())
        model.load_state_dict({k: torch.from_numpy(v) for k, v in cap.global_weights.items()})
        true_grad = fedsgd_gradient(model, x, y, MEAN, STD)
        delta = update_from_weights(model, cap.global_weights, cap.client_weights).tensors  # lr unknown: Δ itself
        for d, g in zip(delta, true_grad):
            torch.testing.assert_close(d, -lr * g, rtol=1e-3, atol=1e-6)

    leaks = {r.node_id: r for r in read_leaks(out / "leaks.jsonl")}
    assert set(leaks) == set(fed.node_ids)
    for node, record in leaks.items():
        x, y = batches[fed.node_ids[node]]
        assert record.status == "done", record.error
        assert record.label_accuracy == 1.0 and sorted(record.recovered_labels) == sorted(y.tolist())
    with ResultStore(out / "results.sqlite", create=False) as store:
        assert sorted(r.status for r in store.runs(status="done")) == ["done", "done"]
