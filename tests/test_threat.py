"""The threat model hands the attacker only what it grants; the client simulator is exact."""

import copy

import pytest
import torch
from torch import nn

from gradleak.errors import ConfigError, UpdateError
from gradleak.models import build_model
from gradleak.threat import ClientUpdate, ThreatModel, UpdateConfig, simulate_client


def _setup(B=3):
    torch.manual_seed(0)
    model = build_model("convnet", (1, 8, 8), 10, width=4, seed=1)
    x, y = torch.rand(B, 1, 8, 8), torch.tensor([1, 2, 2])[:B]
    return model, x, y


def test_fedsgd_is_the_mean_cross_entropy_gradient():
    model, x, y = _setup()
    upd = simulate_client(model, x, y, mean=(0.5,), std=(0.5,))
    loss = nn.functional.cross_entropy(model((x - 0.5) / 0.5), y)
    ref = torch.autograd.grad(loss, list(model.parameters()))
    assert upd.kind == "fedsgd" and len(upd.tensors) == len(ref)
    for a, b in zip(upd.tensors, ref):
        torch.testing.assert_close(a, b)


def test_fedavg_one_full_step_equals_minus_lr_times_gradient():
    model, x, y = _setup()
    before = copy.deepcopy(model.state_dict())
    g = simulate_client(model, x, y).tensors
    d = simulate_client(model, x, y, UpdateConfig("fedavg", local_steps=1, lr=0.05))
    for gi, di in zip(g, d.tensors):
        torch.testing.assert_close(di, -0.05 * gi, rtol=1e-4, atol=1e-7)
    for gi, gr in zip(g, d.as_gradient()):
        torch.testing.assert_close(gr, gi, rtol=1e-3, atol=1e-6)
    # The server's model is untouched by the client's local training.
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_fedavg_several_steps_differs_from_one_gradient():
    model, x, y = _setup()
    g = torch.cat([t.flatten() for t in simulate_client(model, x, y).tensors])
    d = simulate_client(model, x, y, UpdateConfig("fedavg", local_steps=5, lr=0.05))
    est = torch.cat([t.flatten() for t in d.as_gradient()])
    assert not torch.allclose(est, g, rtol=1e-2)
    assert nn.functional.cosine_similarity(est, g, dim=0) > 0.5


def test_observation_withholds_what_is_not_granted():
    model, x, y = _setup()
    for m in model.modules():  # give the model non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(0.3)
    upd = simulate_client(model, x, y)
    assert upd.bn_stats is not None and len(upd.bn_stats) == 8
    obs = ThreatModel().observe(model, upd, (1, 8, 8), 10, labels=y, batch_size=3, class_names=list("abcdefghij"))
    assert obs.labels is None and obs.batch_size == 3 and obs.class_names is not None
    assert obs.bn_stats is None and obs.update.bn_stats is None  # the batch's statistics are withheld
    # The server's own buffers (it sent them) stay, so the attacker computes the client's function.
    bn = [m for m in obs.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.running_mean == 0.3) for m in bn)
    assert obs.model is not model and obs.model.training == model.training
    obs2 = ThreatModel(knows_labels=True, knows_bn_stats=True, knows_batch_size=False,
                       knows_class_names=False).observe(model, upd, (1, 8, 8), 10, labels=y, batch_size=3,
                                                        class_names=list("abcdefghij"))
    assert torch.equal(obs2.labels, y) and obs2.batch_size is None and obs2.class_names is None
    assert obs2.bn_stats is not None and len(obs2.bn_stats) == 8
    # first BN layer's granted mean is the batch mean of the first conv's output
    conv_out = model.features[0](x)
    torch.testing.assert_close(obs2.bn_stats[0][0], conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
    # The observation carries no field holding the private images.
    assert not any(isinstance(v, torch.Tensor) and v.shape == x.shape for v in vars(obs2).values())


def test_schedule_withheld_reads_fedavg_delta_as_minus_delta():
    model, x, y = _setup()
    d = simulate_client(model, x, y, UpdateConfig("fedavg", local_steps=2, lr=0.1))
    obs = ThreatModel(knows_local_schedule=False).observe(model, d, (1, 8, 8), 10)
    for a, b in zip(obs.gradient(), d.tensors):
        torch.testing.assert_close(a, -b)


@pytest.mark.parametrize("corrupt, message", [
    (lambda t: t[:-1], "tensors but the model has"),
    (lambda t: [t[0][:1]] + t[1:], "does not match the update"),
    (lambda t: [t[0] * float("nan")] + t[1:], "NaN or inf"),
    (lambda t: [t[0] + float("inf")] + t[1:], "NaN or inf"),
])
def test_bad_updates_are_refused_with_a_clear_message(corrupt, message):
    model, x, y = _setup()
    upd = simulate_client(model, x, y)
    bad = ClientUpdate("fedsgd", upd.names, corrupt(list(upd.tensors)))
    with pytest.raises(UpdateError, match=message):
        ThreatModel().observe(model, bad, (1, 8, 8), 10)
    with pytest.raises(UpdateError):
        ThreatModel().observe(build_model("lenet", (1, 8, 8), 10), upd, (1, 8, 8), 10)


def _gradient_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, other: torch.Tensor) -> float:
    def flat_gradient(images):
        loss = nn.functional.cross_entropy(model((images - 0.5) / 0.25), y)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])

    a, b = flat_gradient(x), flat_gradient(other)
    return float(1 - a @ b / (a.norm() * b.norm()))


def test_untrained_convnet_in_eval_mode_has_an_image_dependent_gradient():
    # With PyTorch's default conv init the eval-mode signal vanishes with depth and a random image
    # matches the true gradient to cosine distance ≈ 0.007: nothing to invert.
    model = build_model("convnet", (3, 32, 32), 10, width=8, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 3, 32, 32, generator=gen), torch.tensor([3])
    unrelated = _gradient_distance(model, x, y, torch.rand(1, 3, 32, 32, generator=gen))
    nearby = _gradient_distance(model, x, y, (x + 0.01 * torch.randn(x.shape, generator=gen)).clamp(0, 1))
    assert unrelated > 0.05
    assert nearby < unrelated / 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="fedprox"), "unknown update 'fedprox'"),
    (dict(kind="fedavg", local_steps=0), "local steps must be a positive integer, got 0"),
    (dict(kind="fedavg", local_steps=2.5), "local steps must be a positive integer, got 2.5"),
    (dict(kind="fedavg", lr=0.0), "must be positive and finite, got 0.0"),
    (dict(kind="fedavg", lr=float("inf")), "must be positive and finite, got inf"),
    (dict(kind="fedavg", local_batch_size=0), "local batch size must be a positive integer or None"),
])
def test_update_config_refuses_settings_no_client_could_run(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        UpdateConfig(**kwargs)


def test_model_width_and_training_steps_must_be_sensible():
    from gradleak.models.train import train_victim

    with pytest.raises(ConfigError, match="model width must be a positive integer, got 0"):
        build_model("convnet", (3, 32, 32), 10, width=0)
    model = build_model("lenet", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="training steps must be a non-negative integer, got -1"):
        train_victim(model, torch.rand(4, 1, 8, 8), torch.arange(4), -1)
    before = [p.clone() for p in model.parameters()]
    train_victim(model, torch.rand(4, 1, 8, 8), torch.arange(4), 0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_notes_reach_exceptions_with_and_without_add_note():
    from gradleak.errors import add_note, is_int_at_least

    class Python310Exception:  # no add_note before Python 3.11
        pass

    old = Python310Exception()
    add_note(old, "a")
    add_note(old, "b")
    assert old.__notes__ == ["a", "b"]
    new = RuntimeError()
    add_note(new, "c")
    assert new.__notes__ == ["c"]
    assert [is_int_at_least(v, 1) for v in (1, 0, True, 2.0, "3", 7)] == [True, False, False, False, False, True]
