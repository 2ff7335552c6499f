"""Victim architectures and their initialisations by name, seeded; any ``nn.Module`` also works
through the Python API."""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, is_int_at_least
from ..registry import Registry
from .convnet import ConvNet
from .lenet import LeNet
from .resnet import ResNet18


def he_init(model: nn.Module) -> nn.Module:
    """He et al. (ICCV 2015) initialisation of every convolution (normal, fan-out, ReLU gain; zero
    bias), as torchvision initialises its ResNets.

    PyTorch's default conv init shrinks the signal about 6× in variance per conv–ReLU layer. With
    BatchNorm in eval mode at its initial statistics (identity), an untrained ConvNet-64 then
    passes almost nothing of the image to its logits: a uniformly random image matches the true
    image's gradient to cosine distance 0.007 and no attack can tell them apart. He init keeps the
    signal (random image: 0.30; true image + 1 % noise: 0.03), the regime of a model in training.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def dlg_init(model: nn.Module) -> nn.Module:
    """DLG's initialisation (Zhu et al., NeurIPS 2019; breaching's ``LeNetZhu``): every parameter
    uniform in [−0.5, 0.5]. Far larger than PyTorch's for a 768-input layer (±0.036), so an
    untrained LeNet is confident: it predicts one or two classes for nearly every image."""
    for p in model.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    return model


def pytorch_init(model: nn.Module) -> nn.Module:
    """PyTorch's own layer initialisation (Kaiming-uniform with a = √5), as a framework user's
    model starts; an untrained LeNet then predicts nearly uniformly."""
    return model


INITS: Registry[Callable[[nn.Module], nn.Module]] = Registry("initialisation")
INITS.add("dlg", dlg_init)
INITS.add("he", he_init)
INITS.add("pytorch", pytorch_init)

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.add("lenet", LeNet)
MODELS.add("convnet", ConvNet)
MODELS.add("resnet18", ResNet18)

DEFAULT_WIDTH = {"lenet": 12, "convnet": 64, "resnet18": 64}
# Each architecture's initialisation in the attack literature (DLG for LeNet; He, as torchvision's
# ResNets, for the ReLU networks); ``init="pytorch"`` gives the framework's default instead.
DEFAULT_INIT = {"lenet": "dlg", "convnet": "he", "resnet18": "he"}


def init_name(model: str, init: str | None) -> str:
    """The initialisation ``build_model(model, …, init=init)`` applies: ``init``, or the architecture's."""
    return init or DEFAULT_INIT[model]


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    width: int | None = None,
    seed: int = 0,
    init: str | None = None,
) -> nn.Module:
    """Build ``name`` for inputs of ``input_shape`` (C, H, W), initialised from ``seed`` by ``init``
    (an :data:`INITS` name; None: the architecture's :data:`DEFAULT_INIT`)."""
    factory = MODELS.get(name)
    initialise = INITS.get(init_name(name, init))
    if width is not None and not is_int_at_least(width, 1):
        raise ConfigError(f"model width must be a positive integer, got {width!r}")
    c, h, _ = input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = initialise(factory(in_channels=c, num_classes=num_classes, image_size=h,
                                   width=width or DEFAULT_WIDTH[name]))
    return model


def normalize_input(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """``(x − mean) / std`` per channel: pixels in [0, 1] as the model sees them (identity without stats)."""
    if mean is None or std is None:
        return x
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def weights_fingerprint(model: nn.Module) -> str:
    """A digest of the architecture and every parameter and buffer (not of train/eval modes): which
    weights an update was computed against."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(model).encode())
    for name, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):  # a module's extra state may be any object
            digest.update(f"{name} {tensor!r}".encode())
            continue
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def last_linear(model: nn.Module) -> tuple[str, str | None]:
    """Parameter names of the final ``nn.Linear`` (weight, bias or None): the layer label attacks read."""
    found = None
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            found = mod_name
    if found is None:
        raise ConfigError("the model has no nn.Linear layer; analytic label recovery needs a linear output layer")
    mod = model.get_submodule(found)
    prefix = f"{found}." if found else ""
    return prefix + "weight", (prefix + "bias" if mod.bias is not None else None)


__all__ = ["DEFAULT_INIT", "INITS", "MODELS", "ConvNet", "LeNet", "ResNet18", "build_model", "init_name", "last_linear", "normalize_input", "weights_fingerprint"]
