"""In the federation (issue #27): the eavesdropper attacks multi-step FedAvg replies with the schedule it
observes in the server's own train config (lr, local epochs or steps, local mini-batch), the unrolled
matcher simulates exactly that schedule, and the demo exposes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradleak.errors import ConfigError
from gradleak.models import build_model

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_APP = REPO / "gradleak" / "integrations" / "flower_app"
MEAN, STD = (0.3051,), (0.3759,)




def _fedavg_capture(app_task, epochs=2, local_batch=2, lr=0.05, labels=(0, 3, 3, 8), server_round=3, shuffle_seed=11):
    """θ of a seeded LeNet and θ' after the example client's own local training (task.local_sgd): ``epochs``
    epochs in mini-batches of ``local_batch``, reshuffled by a generator the server never sees."""
    from gradleak.integrations.capture import CapturedUpdate
    from gradleak.integrations.weights import TaskSpec

    task = TaskSpec("lenet", (1, 8, 8), 10, MEAN, STD, tuple(str(i) for i in range(10)), dataset="digits")
    model = build_model("lenet", (1, 8, 8), 10, seed=3)
    x = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(7))
    y = torch.tensor(labels)
    client = build_model("lenet", (1, 8, 8), 10)
    client.load_state_dict(model.state_dict())
    shuffle = torch.Generator().manual_seed(shuffle_seed)
    steps = epochs * -(-len(labels) // local_batch)
    app_task.local_sgd(client, (x - MEAN[0]) / STD[0], y, lr, steps, local_batch, shuffle)
    theta = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    theta_prime = {k: v.numpy().copy() for k, v in client.state_dict().items()}
    train_config = {"lr": lr, "local-epochs": epochs, "local-batch-size": local_batch, "server-round": server_round}
    capture = CapturedUpdate(server_round, 7, theta, theta_prime, train_config, {"num-examples": len(labels)})
    return task, model, capture, x, y


def test_schedule_in_local_epochs_is_k_steps_of_the_reply_and_steps_win():
    from gradleak.integrations.capture import CapturedUpdate
    from gradleak.integrations.weights import LocalSchedule

    read = LocalSchedule().read
    assert read({"lr": 0.1, "local-epochs": 2, "local-batch-size": 8}, 32) == (0.1, 8, 8)  # K = 2 · ⌈32/8⌉
    assert read({"lr": 0.1, "local-epochs": 3, "local-batch-size": 8}, 30) == (0.1, 12, 8)  # last mini-batch short
    assert read({"lr": 0.1, "local-epochs": 2, "local-batch-size": 0}, 32) == (0.1, 2, None)  # 0: the whole batch
    assert read({"lr": 0.1, "local-steps": 5, "local-epochs": 2, "local-batch-size": 8}, 32) == (0.1, 5, 8)
    assert read({"lr": 0.1, "local-epochs": 2}, None) == (0.1, 1, None)  # B unknown: the default
    # Under secure aggregation num-examples is the members' sum; a client's epochs run over its own share.
    agg = CapturedUpdate(1, 0, {}, {}, {}, {"num-examples": 96}, members=(1, 2, 3))
    assert agg.examples_per_client() == 32


@pytest.mark.parametrize("matching", ["unrolled", "unrolled-checkpoint"])
def test_eavesdropper_attacks_a_fedavg_capture_with_the_observed_schedule(monkeypatch, matching, example_app_task):
    """The unrolled matcher runs on exactly the (η, K, b) the server sent; earlier rounds are not attacked."""
    import gradleak.attacks.inversion.fedavg as fedavg
    from gradleak.config import AttackConfig
    from gradleak.integrations.eavesdropper import EavesdropConfig, Eavesdropper

    task, _, capture, x, y = _fedavg_capture(example_app_task, epochs=2, local_batch=2, lr=0.05)
    seen = []
    original = fedavg.UnrolledMatcher.__init__

    def spy(self, observation, config, labels):
        original(self, observation, config, labels)
        seen.append((self.lr, self.steps, [None if i is None else i.tolist() for i in self.plan],
                     self.checkpointed, config.fedavg_matching))

    monkeypatch.setattr(fedavg.UnrolledMatcher, "__init__", spy)
    cfg = AttackConfig.of(iterations=2, fedavg_matching=matching, client_mode="train")
    eaves = Eavesdropper(task, EavesdropConfig(cfg, isolation="thread", timeout_s=120, first_round=3),
                         ground_truth=lambda c: (x, y))
    early = type(capture)(2, 7, capture.global_weights, capture.client_weights, capture.train_config,
                          capture.metrics)
    assert eaves.capture(early) is False  # round 2 < first_round: the model is still training
    assert eaves.capture(capture)
    records = eaves.close(timeout_s=120)
    assert [(r.server_round, r.status) for r in records] == [(3, "done")], records[0].error
    r = records[0]
    assert (r.lr, r.local_steps, r.local_batch_size, r.num_examples) == (0.05, 4, 2, 4)
    # K = 2 epochs · ⌈4/2⌉: the first epoch in the dummy batch's order (the client's permutation of it
    # is a relabelling of the dummies), the reshuffled second epoch as the whole-batch expectation.
    assert seen and all(s == (0.05, 4, [[0, 1], [2, 3], None, None], matching == "unrolled-checkpoint", matching)
                        for s in seen)
    assert r.label_accuracy is not None and r.ssim is not None and "ssim_random_baseline" in r.summary


def test_unrolled_simulation_replays_the_flower_clients_epoch_exactly(example_app_task):
    """One epoch: the attacker's simulated Δ at the client's images, in the client's (private) order,
    is the captured Δ; the order is the one freedom the dummies absorb."""
    from gradleak.attacks.inversion.fedavg import simulate_delta, step_plan
    from gradleak.config import AttackConfig
    from gradleak.integrations.eavesdropper import observe_capture

    task, _, capture, x, y = _fedavg_capture(example_app_task, epochs=1, local_batch=2, lr=0.1, shuffle_seed=5)
    obs = observe_capture(capture, task, AttackConfig.of(client_mode="train"))
    u = obs.update
    assert (u.kind, u.lr, u.local_steps, u.local_batch_size) == ("fedavg", 0.1, 2, 2)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(5))  # the client's first shuffle
    plan = step_plan(4, u.local_batch_size, u.local_steps)
    sim = simulate_delta(obs.model, obs.normalize(x[perm]), y[perm], u.lr, plan, create_graph=False)
    for got, want in zip(sim, u.tensors):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_demo_exposes_epochs_local_batch_matching_and_the_attacked_rounds(example_app_task):
    import tomllib

    import tomli_w

    from gradleak.integrations.flower_demo import FlowerDemoConfig, FlowerDemoResult, demo_attack_config, \
        demo_run_config, format_report

    declared = tomllib.loads((EXAMPLE_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    attack = demo_attack_config(batch_size=32, local_batch_size=8, fedavg_matching="unrolled", iterations=5)
    cfg = FlowerDemoConfig(attack, rounds=5, clients=4, local_epochs=2, attack_from_round=5)
    cfg.validate()
    assert cfg.local_steps == 8  # 2 epochs · ⌈32/8⌉
    run_config = tomllib.loads(tomli_w.dumps(demo_run_config(cfg, 0.0)))
    assert set(run_config) <= set(declared), set(run_config) - set(declared)
    assert (run_config["local-epochs"], run_config["attack-from-round"], run_config["local-batch-size"],
            run_config["fedavg-matching"]) == (2, 5, 8, "unrolled")
    assert example_app_task.attack_config(run_config) == cfg.attack
    report = format_report(FlowerDemoResult(cfg, []))
    assert "2 epochs, 8 local steps on mini-batches of 8; attack matches unrolled" in report
    assert "from round 5" in report and "0 of 4 updates" in report  # 4 clients × the one attacked round

    for bad, match in [(dict(local_epochs=2, attack=demo_attack_config(local_steps=3)), "replaces local_steps"),
                       (dict(attack=demo_attack_config(batch_size=30, local_batch_size=8)), "must divide"),
                       (dict(rounds=3, attack_from_round=4), "attack_from_round")]:
        with pytest.raises(ConfigError, match=match):
            FlowerDemoConfig(**bad).validate()


def test_flower_demo_cli_passes_the_users_setting(tmp_path, monkeypatch, cli):
    pytest.importorskip("flwr")
    import gradleak.integrations.flower_demo as demo

    seen = []
    monkeypatch.setattr(demo, "run_flower_demo", lambda cfg: seen.append(cfg) or demo.FlowerDemoResult(cfg, []))
    code, out, err = cli(["flower-demo", "--clients", "4", "--rounds", "5", "-b", "32", "--local-epochs", "2",
                          "--local-batch-size", "8", "--attack-from-round", "5", "--fedavg-matching", "unrolled",
                          "-o", str(tmp_path / "o")])
    assert code == 0, err
    cfg = seen[0]
    assert (cfg.clients, cfg.rounds, cfg.local_epochs, cfg.attack_from_round, cfg.local_steps) == (4, 5, 2, 5, 8)
    assert (cfg.attack.client.local_batch_size, cfg.attack.inversion.fedavg_matching) == (8, "unrolled")


@pytest.mark.slow
def test_real_federation_attacks_the_last_round_with_the_epoch_schedule(tmp_path):
    """SuperLink + 2 SuperNodes, 2 rounds, the clients train 2 local epochs in mini-batches of 2; the
    server attacks round 2 only, with the unrolled matcher on K = 4 read from its own train config."""
    pytest.importorskip("flwr")
    from gradleak.integrations.eavesdropper import read_leaks
    from gradleak.integrations.flower_local import LocalFederation, marked_processes
    from gradleak.threat.io import load_update

    out = tmp_path / "out"
    fed = LocalFederation(num_nodes=2, home=tmp_path / "flwr-home", log_dir=tmp_path / "logs", start_timeout_s=90)
    try:
        fed.start()
        outcome = fed.run(EXAMPLE_APP, {
            "num-server-rounds": 2, "min-nodes": 2, "batch-size": 4, "local-lr": 0.05, "local-epochs": 2,
            "local-batch-size": 2, "fedavg-matching": "unrolled", "attack-from-round": 2, "iterations": 2,
            "attack-isolation": "thread", "attack-timeout": 120.0, "drain-timeout": 120.0,
            "out-dir": str(out), "truth-dir": str(out / "truth"), "save-captures": True,
        }, timeout_s=240)
        assert outcome.ok, (outcome.status, outcome.log.read_text()[-3000:])
    finally:
        fed.close()
    assert fed.processes() == [] and marked_processes(fed.session) == []
    leaks = read_leaks(out / "leaks.jsonl")
    assert sorted(r.server_round for r in leaks) == [2, 2]
    for r in leaks:
        assert r.status == "done", r.error
        assert (r.lr, r.local_steps, r.local_batch_size, r.num_examples) == (0.05, 4, 2, 4)
        cap = load_update(r.capture)
        assert (cap.update.local_steps, cap.update.local_batch_size, cap.update.lr) == (4, 2, 0.05)
