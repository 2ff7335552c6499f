"""breaching's own Inverting-Gradients loop, timed on this machine (``attack_speed.py --breaching``).

breaching (Geiping et al., https://github.com/JonasGeiping/breaching) is the public toolkit the
speed target is set against. Install its PyPI release next to gradleak, without its
dependencies (they would replace torch):

    pip install --no-deps breaching==0.1.2 && pip install hydra-core

Its package imports torchvision and lpips for datasets and metrics that the attack never calls.
Where they do not import (torchvision from the registry does not with torch 2.13), empty stand-ins
are put in their place before breaching is imported; the attack code is breaching's, unchanged.
"""

from __future__ import annotations

import copy
import functools
import importlib.abc
import importlib.machinery
import importlib.resources
import sys
import time
import types

import torch

_MISSING = ("torchvision", "lpips")


class _StandIn(types.ModuleType):
    """A module whose every attribute is another stand-in (classes derive from ``object``)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _StandIn(f"{self.__name__}.{name}")
        sub.__path__ = []
        sys.modules[sub.__name__] = sub
        return sub

    def __call__(self, *args, **kwargs):
        return self

    def __mro_entries__(self, bases):
        return (object,)


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # torchvision built for another torch raises RuntimeError, not ImportError
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        return False


@functools.lru_cache(maxsize=None)
def import_breaching():
    """``(breaching.attacks, attack config)``, imported and read once; raises ImportError with the
    install line if absent. Callers copy the config before changing it."""
    try:
        import hydra  # noqa: F401  (breaching's __init__ imports it)
        from omegaconf import OmegaConf
    except ImportError as err:
        raise ImportError("breaching needs hydra-core: pip install hydra-core") from err
    missing = [name for name in _MISSING if not _importable(name)]
    if missing:
        sys.meta_path.insert(0, _StandInFinder(missing))
    try:
        import breaching.attacks as attacks
    except ImportError as err:
        raise ImportError("breaching is not installed: pip install --no-deps breaching==0.1.2") from err
    folder = importlib.resources.files("breaching") / "config" / "attack"
    base = OmegaConf.load(str(folder / "_default_optimization_attack.yaml"))
    ig = OmegaConf.load(str(folder / "invertinggradients.yaml"))
    del ig["defaults"]
    return attacks, OmegaConf.merge(base, ig)


class _Metadata(dict):
    __getattr__ = dict.__getitem__


def breaching_loop(obs, labels, iterations: int, mixed_precision: bool = False) -> float:
    """Seconds per iteration of breaching's ``OptimizationBasedAttacker`` with its
    ``invertinggradients`` preset, on the same model, gradient and labels as gradleak's loop.

    The victim's BN mode carries over as breaching models it: eval mode when the client shares
    its BN buffers, train mode (batch statistics) when it does not.
    """
    attacks, preset = import_breaching()
    cfg = copy.deepcopy(preset)
    cfg.impl.mixed_precision = mixed_precision
    cfg.optim.callback = 10**9
    model = obs.model
    meta = _Metadata(shape=tuple(obs.input_shape), mean=tuple(obs.mean), std=tuple(obs.std), modality="vision",
                     num_data_points=int(labels.shape[0]), local_hyperparams=None, labels=labels.clone())
    buffers = [b.clone() for b in model.buffers()] if not model.training else None
    payload = [dict(parameters=[p.detach().clone() for p in model.parameters()], buffers=None, metadata=meta)]
    shared = [dict(gradients=[g.detach().clone() for g in obs.gradient()], buffers=buffers, metadata=meta)]
    loss_fn = torch.nn.CrossEntropyLoss()
    attacker = attacks.OptimizationBasedAttacker(model, loss_fn, cfg, dict(dtype=torch.float, device=torch.device("cpu")))
    rec_models, rec_labels, stats = attacker.prepare_attack(payload, shared)

    def trial(n: int) -> float:
        attacker.cfg.optim.max_iterations = n
        start = time.perf_counter()
        attacker._run_trial(rec_models, shared, rec_labels, stats, 0)
        return time.perf_counter() - start

    trial(2)  # warm-up
    return (trial(2 * iterations) - trial(iterations)) / iterations  # as gradleak_loop: no one-off work
