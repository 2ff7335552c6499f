"""A trained victim is trained once per (architecture, seed, data, schedule) and reloaded bit for bit."""
import torch

from gradleak.config import AttackConfig
from gradleak.data import load_dataset
from gradleak.studies import client as client_mod


def _cfg(**kw):
    return AttackConfig.from_dict({"dataset": "digits", "model": "lenet", "trained_steps": 5, **kw})


def test_second_build_loads_the_same_weights_without_training(monkeypatch):
    data = load_dataset("digits", "test")
    first = client_mod.build_victim(_cfg(), data, seed=3)
    calls = []
    real = client_mod.train_victim
    monkeypatch.setattr(client_mod, "train_victim", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = client_mod.build_victim(_cfg(), data, seed=3)
    assert calls == []
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_other_settings_train_their_own_victim(monkeypatch):
    data = load_dataset("digits", "test")
    client_mod.build_victim(_cfg(), data, seed=4)
    calls = []
    real = client_mod.train_victim
    monkeypatch.setattr(client_mod, "train_victim", lambda *a, **k: calls.append(1) or real(*a, **k))
    other_seed = client_mod.build_victim(_cfg(), data, seed=5)
    other_steps = client_mod.build_victim(_cfg(trained_steps=6), data, seed=4)
    assert len(calls) == 2
    assert not torch.equal(next(other_seed.parameters()), next(other_steps.parameters()))
