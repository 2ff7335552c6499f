"""Victim models: initialisations by name, reproducible from a seed."""

from __future__ import annotations

import math

import pytest
import torch

from gradleak.attacks.labels.base import model_fingerprint
from gradleak.cli import main
from gradleak.errors import ConfigError
from gradleak.models import DEFAULT_INIT, INITS, MODELS, build_model
from gradleak.config import AttackConfig

SHAPE = (3, 32, 32)


@pytest.mark.parametrize("name", MODELS.names())
def test_default_init_is_the_architectures_and_every_init_is_seeded(name):
    width = 8 if name != "lenet" else None
    def built(**kwargs):
        return model_fingerprint(build_model(name, SHAPE, 10, width=width, **kwargs))

    default = built(seed=3)
    assert default == built(seed=3, init=DEFAULT_INIT[name])
    for init in INITS.names():
        first = built(seed=3, init=init)
        assert first == built(seed=3, init=init) and first != built(seed=4, init=init)
        assert (first == default) == (init == DEFAULT_INIT[name])


def test_lenet_inits_have_their_published_ranges():
    dlg = build_model("lenet", SHAPE, 10, seed=0)
    values = torch.cat([p.detach().flatten() for p in dlg.parameters()])
    assert values.abs().max() <= 0.5 and values.abs().max() > 0.49  # DLG: every parameter U(−0.5, 0.5)
    plain = build_model("lenet", SHAPE, 10, seed=0, init="pytorch")
    fan_in = plain.fc.weight.shape[1]
    assert plain.fc.weight.abs().max() <= 1 / math.sqrt(fan_in)  # PyTorch's Linear: U(±1/√fan_in)
    assert plain.fc.weight.abs().max() > 0.9 / math.sqrt(fan_in)
    x = torch.rand(64, *SHAPE)
    with torch.no_grad():
        confident = dlg(x).softmax(1).max(1).values.mean()
        uniform = plain(x).softmax(1).max(1).values.mean()
    assert confident > 0.5 and uniform < 0.2  # why the label benchmarks report both


def test_he_init_keeps_the_convolutions_signal():
    he = build_model("convnet", SHAPE, 10, width=16, seed=0)
    plain = build_model("convnet", SHAPE, 10, width=16, seed=0, init="pytorch")
    conv, plain_conv = ([m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1] for model in (he, plain))
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    # PyTorch's U(±1/√fan_in) has std 1/√(3 fan_in): √6 times smaller where fan_in = fan_out
    assert plain_conv.weight.std().item() == pytest.approx(conv.weight.std().item() / math.sqrt(6), rel=0.1)


def test_unknown_init_is_a_config_error_listing_the_choices(capsys):
    with pytest.raises(ConfigError, match="unknown initialisation 'xavier'.*dlg, he, pytorch"):
        build_model("lenet", SHAPE, 10, init="xavier")
    with pytest.raises(ConfigError, match="unknown init 'xavier'"):
        AttackConfig.of(init="xavier")
    assert AttackConfig.of(init="pytorch").victim.init == "pytorch"
    with pytest.raises(SystemExit) as stop:
        main(["labels", "--dataset", "digits", "--init", "xavier", "-q"])
    assert stop.value.code == 2 and "xavier" in capsys.readouterr().err
