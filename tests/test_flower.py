"""The Flower integration: update conversion, the off-path worker, the strategy wrapper, and a
real SuperLink + SuperNodes federation on 127.0.0.1 attacked by its own server."""

from __future__ import annotations

import json
import os
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
    from gradleak.config import AttackConfig
    from gradleak.integrations.weights import TaskSpec

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

    hidden = observe_capture(capture, task, AttackConfig.of(knows_local_schedule=False))
    assert hidden.update.lr is None
    with pytest.raises(GradleakError, match="labels"):
        observe_capture(capture, task, AttackConfig.of(knows_labels=True))
    # The clients' train/eval mode is the config's (the server ships the clients' training code).
    assert observe_capture(capture, task, AttackConfig.of(client_mode="train")).model.training
    assert not observe_capture(capture, task, AttackConfig.of(client_mode="eval")).model.training


def _capture_pair(labels, lr=0.1, seed=3, server_round=2, node_id=2**63 - 5):
    """A capture of one FedSGD reply built without a federation: θ of a seeded LeNet, θ' one SGD step on."""
    from gradleak.integrations.capture import CapturedUpdate
    from gradleak.integrations.weights import TaskSpec

    task = TaskSpec("lenet", (1, 8, 8), 10, MEAN, STD, tuple(str(i) for i in range(10)), dataset="digits")
    model = build_model("lenet", (1, 8, 8), 10, seed=seed)  # not the weights `attack --seed 0` would build
    x, y = _digits_batch(labels)
    theta = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    theta_prime = {k: v.numpy().copy() for k, v in _sgd_step(model, x, y, lr).items()}
    capture = CapturedUpdate(server_round, node_id, theta, theta_prime, {"lr": lr, "local-steps": 1},
                             {"num-examples": len(labels)})
    return task, model, capture, x, y


def test_saved_capture_is_a_recorded_update_with_the_global_weights(tmp_path):
    from gradleak.config import AttackConfig
    from gradleak.integrations.capture import save_capture
    from gradleak.models import weights_fingerprint
    from gradleak.threat.io import load_update

    task, model, capture, x, y = _capture_pair([4, 1, 9])
    path = save_capture(tmp_path / "c.safetensors", capture, task, AttackConfig.of(client_mode="train"), truth=(x, y))
    rec = load_update(path)
    assert rec.fingerprint == weights_fingerprint(model) and rec.architecture == "LeNet"
    assert set(rec.weights) == set(capture.global_weights)
    assert all(np.array_equal(rec.weights[k].numpy(), capture.global_weights[k]) for k in capture.global_weights)
    assert (rec.update.kind, rec.update.lr, rec.update.local_steps) == ("fedavg", 0.1, 1)
    for d, name in zip(rec.update.tensors, rec.update.names):  # Δ = θ' − θ itself
        torch.testing.assert_close(d, torch.from_numpy(capture.client_weights[name] - capture.global_weights[name]))
    for got, want in zip(rec.update.as_gradient(), fedsgd_gradient(model, x, y, MEAN, STD)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-5)
    assert rec.facts == {"dataset": "digits", "model": "lenet", "width": None, "input_shape": [1, 8, 8],
                         "num_classes": 10, "batch_size": 3, "client_mode": "train", "mean": list(MEAN),
                         "std": list(STD), "class_names": [str(i) for i in range(10)], "server_round": 2,
                         "node_id": 2**63 - 5}
    torch.testing.assert_close(rec.truth[0], x)
    assert rec.truth[1].tolist() == [4, 1, 9]
    assert load_update(save_capture(tmp_path / "n.safetensors", capture, task, AttackConfig())).truth is None


def test_saved_capture_replays_through_gradleak_attack(tmp_path, cli):
    from gradleak.config import AttackConfig
    from gradleak.integrations.capture import save_capture

    task, _, capture, _, _ = _capture_pair([4, 1, 9])
    scored = save_capture(tmp_path / "t.safetensors", capture, task, AttackConfig.of(client_mode="train"),
                          truth=_digits_batch([4, 1, 9]))
    bare = save_capture(tmp_path / "b.safetensors", capture, task, AttackConfig.of(client_mode="train"))
    base = ["attack", "-q", "--dataset", "digits", "--model", "lenet", "--iterations", "2", "--observed-update"]
    # The model flags pick the architecture; the stored θ replaces the seed-0 weights, so the fingerprint fits.
    code, out, err = cli(base + [str(scored), "-o", str(tmp_path / "a")])
    assert code == 0, err
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["true_labels"] == [4, 1, 9] and result["label_accuracy"] == 1.0
    assert sorted(result["recovered_labels"]) == [1, 4, 9] and 0.0 <= result["ssim"] <= 1.0
    code, out, err = cli(base + [str(bare), "-o", str(tmp_path / "b")])
    assert code == 0 and "nothing scored" in out, err
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["ssim"] is None and result["label_accuracy"] is None
    assert sorted(result["recovered_labels"]) == [1, 4, 9]
    # Another architecture is refused in one line, not attacked against the wrong weights.
    code, _, err = cli(base + [str(bare), "--model", "convnet", "-o", str(tmp_path / "c")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "do not fit convnet" in err


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
    from gradleak.studies.attack import AttackOutcome

    b = capture.num_examples()
    labels = torch.zeros(b, dtype=torch.long)
    return AttackOutcome(labels, "none", Reconstruction(torch.zeros(b, 1, 8, 8), labels, 0.0, [0.0], [], 1, 0.0, []), 0.0)


def _failing_attack(capture, task, cfg, schedule):
    raise RuntimeError("inversion diverged")


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
    from gradleak.config import AttackConfig
    from gradleak.experiments.store import ResultStore
    from gradleak.integrations.capture import CapturedUpdate, GroundTruthFolder, write_ground_truth
    from gradleak.integrations.eavesdropper import EavesdropConfig, Eavesdropper, read_leaks, store_sinks
    from gradleak.integrations.weights import TaskSpec
    from gradleak.models import weights_fingerprint
    from gradleak.threat.io import load_update

    task = TaskSpec("lenet", (1, 8, 8), 10, MEAN, STD, tuple(str(i) for i in range(10)))
    model = task.build_model()
    x, y = _digits_batch([4, 1, 9])
    theta = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    theta_prime = {k: v.numpy().copy() for k, v in _sgd_step(model, x, y, 0.1).items()}
    write_ground_truth(tmp_path / "truth", 1, 5, x, y)
    config = EavesdropConfig(AttackConfig.of(iterations=3), isolation="thread", timeout_s=120, out_dir=tmp_path / "out",
                             save_captures=True)
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
    # Every capture is saved as a recorded update with θ; the ground truth only where the evaluator had it.
    saved = {n: load_update(records[n].capture) for n in (5, 6)}
    assert Path(records[5].capture) == tmp_path / "out" / "captures" / "round001-node5.safetensors"
    assert saved[5].truth[1].tolist() == [4, 1, 9] and saved[6].truth is None
    assert all(s.fingerprint == weights_fingerprint(model) and s.facts["batch_size"] == 3 for s in saved.values())




def test_demo_hands_the_initialisation_to_the_server_app():
    from gradleak.errors import ConfigError
    from gradleak.integrations.flower_demo import FlowerDemoConfig, demo_attack_config, demo_run_config

    assert demo_run_config(FlowerDemoConfig(), 0.0)["init"] == ""  # the app's default: the model's own
    assert demo_run_config(FlowerDemoConfig(demo_attack_config(init="pytorch")), 0.0)["init"] == "pytorch"
    with pytest.raises(ConfigError, match="unknown init 'xavier'"):
        demo_attack_config(init="xavier")
    with pytest.raises(ConfigError, match="client_mode must be train"):
        FlowerDemoConfig(demo_attack_config(client_mode="eval")).validate()
    with pytest.raises(ConfigError, match="cannot apply option.s. knows_labels, labeler"):
        FlowerDemoConfig(demo_attack_config(labeler="classifier", knows_labels=True)).validate()


def test_demo_run_config_round_trips_to_the_server_apps_attack_config(example_app_task):
    """Every key the demo sends is one the app declares (Flower refuses others), and the server app
    rebuilds exactly the demo's AttackConfig from them."""
    import tomllib

    import tomli_w

    from gradleak.integrations.flower_demo import APP_OPTIONS, FlowerDemoConfig, demo_attack_config, demo_run_config

    declared = tomllib.loads((EXAMPLE_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    task = example_app_task
    for options in ({}, {"init": "pytorch", "width": 6, "local_lr": 0.05, "local_steps": 3, "iterations": 7,
                         "tv": 0.0, "step_size": 0.2, "restarts": 2, "labels": "ilrg", "batch_size": 8, "seed": 4,
                         "knows_local_schedule": False, "attack": "dlg", "model": "convnet"}):
        cfg = FlowerDemoConfig(demo_attack_config(**options), save_captures=True)
        cfg.validate()
        run_config = tomllib.loads(tomli_w.dumps(demo_run_config(cfg, 0.0)))  # as flwr run reads it
        assert set(run_config) <= set(declared), set(run_config) - set(declared)
        assert task.attack_config(run_config) == cfg.attack
        spec = task.task_spec(run_config)
        assert (spec.model, spec.width, spec.dataset) == (cfg.attack.victim.model, cfg.attack.victim.width, "digits")
    assert {k.replace("_", "-") for k in APP_OPTIONS} <= set(declared)
    # The app's own defaults are the demo's defaults.
    assert task.attack_config(declared) == demo_attack_config()


def test_flower_demo_reads_a_config_file_under_its_flags(tmp_path, monkeypatch, cli):
    pytest.importorskip("flwr")
    import gradleak.integrations.flower_demo as demo

    seen = []

    def fake_run(cfg):
        seen.append(cfg)
        return demo.FlowerDemoResult(cfg, [])

    monkeypatch.setattr(demo, "run_flower_demo", fake_run)
    conf = tmp_path / "demo.yaml"
    conf.write_text("inversion: {iterations: 40, attack: dlg}\nclient: {local_steps: 2}\ninit: pytorch\n")
    code, out, err = cli(["flower-demo", "--config", str(conf), "--iterations", "5", "-o", str(tmp_path / "o"),
                              "--rounds", "2"])
    assert code == 0, err
    a = seen[0].attack
    assert (a.inversion.iterations, a.inversion.attack, a.client.local_steps, a.victim.init) == (5, "dlg", 2, "pytorch")
    assert a.client.client_mode == "train" and seen[0].rounds == 2 and "dlg × 5 it" in out
    code, _, _ = cli(["flower-demo", "-o", str(tmp_path / "o")])
    assert code == 0 and seen[1].attack == demo.demo_attack_config()  # no file, no flags: the demo's defaults


def test_flower_demo_refuses_a_non_empty_out_without_overwrite(tmp_path, monkeypatch, cli):
    pytest.importorskip("flwr")
    import gradleak.integrations.flower_local as local

    class NoFederation:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a federation was started")

    monkeypatch.setattr(local, "LocalFederation", NoFederation)
    out = tmp_path / "out"
    out.mkdir()
    (out / "leaks.jsonl").write_text("{}\n")  # an earlier demo's results
    code, _, err = cli(["flower-demo", "--rounds", "1", "-o", str(out)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not empty" in err and "--overwrite" in err
    assert (out / "leaks.jsonl").read_text() == "{}\n"  # untouched
    # With --overwrite the old results go and the demo goes on (to the federation, stubbed here).
    from gradleak.cli import main

    with pytest.raises(AssertionError, match="a federation was started"):
        main(["flower-demo", "--rounds", "1", "-o", str(out), "--overwrite"])
    assert not (out / "leaks.jsonl").exists() and json.loads((out / "config.json").read_text())["rounds"] == 1


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
def test_real_flower_federation_leaks_fedsgd_gradient_and_labels(tmp_path, example_app_task):
    """SuperLink + 2 SuperNodes on 127.0.0.1 run the example app for one FedSGD round.

    The server's captured update must be −lr × the client's true gradient, and the labels it
    recovers must be the client's batch; afterwards no process of the session may be left.
    """
    pytest.importorskip("flwr")
    from gradleak.experiments.store import ResultStore
    from gradleak.integrations.capture import read_ground_truth, truth_path
    from gradleak.integrations.eavesdropper import read_leaks
    from gradleak.integrations.flower_local import LocalFederation, marked_processes
    from gradleak.threat.io import load_update

    client_batch = example_app_task.client_batch

    out, truth, lr, batch = tmp_path / "out", tmp_path / "truth", 0.1, 4
    fed = LocalFederation(num_nodes=2, home=tmp_path / "flwr-home", log_dir=tmp_path / "logs", start_timeout_s=90)
    try:
        fed.start()
        outcome = fed.run(EXAMPLE_APP, {
            "num-server-rounds": 1, "min-nodes": 2, "batch-size": batch, "local-lr": lr, "local-steps": 1,
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
    captures = sorted((out / "captures").glob("*.safetensors"))
    assert len(captures) == 2
    for path in captures:
        cap = load_update(path)
        node = cap.facts["node_id"]
        assert node in fed.node_ids and cap.facts["server_round"] == 1 and cap.facts["client_mode"] == "train"
        assert set(cap.weights) == set(initial)
        assert all(np.array_equal(cap.weights[k].numpy(), initial[k]) for k in initial)
        x, y = batches[fed.node_ids[node]]
        torch.testing.assert_close(cap.truth[0], x)  # the evaluator stored the batch the client trained on
        assert cap.truth[1].tolist() == y.tolist() == read_ground_truth(truth_path(truth, 1, node))[1].tolist()
        true_grad = fedsgd_gradient(model, x, y, MEAN, STD)
        assert (cap.update.lr, cap.update.local_steps) == (lr, 1)  # the schedule the server sent
        for d, g in zip(cap.update.tensors, true_grad):  # Δ itself
            torch.testing.assert_close(d, -lr * g, rtol=1e-3, atol=1e-6)
    # A capture replays through `gradleak attack` (the stored θ replaces the seed-0 dlg weights).
    from gradleak.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["attack", "-q", "--dataset", "digits", "--model", "lenet", "--iterations", "2", "--observed-update",
              str(captures[0]), "-o", str(tmp_path / "replay")])
        raise SystemExit(0)
    assert exc.value.code == 0
    replay = json.loads((tmp_path / "replay" / "result.json").read_text())
    assert replay["label_accuracy"] == 1.0 and replay["true_labels"] == load_update(captures[0]).truth[1].tolist()

    leaks = {r.node_id: r for r in read_leaks(out / "leaks.jsonl")}
    assert set(leaks) == set(fed.node_ids)
    for node, record in leaks.items():
        x, y = batches[fed.node_ids[node]]
        assert record.status == "done", record.error
        assert record.label_accuracy == 1.0 and sorted(record.recovered_labels) == sorted(y.tolist())
    with ResultStore(out / "results.sqlite", create=False) as store:
        assert sorted(r.status for r in store.runs(status="done")) == ["done", "done"]
