"""Utility of a defence: the held-out accuracy a model reaches when trained by federated averaging
with the clients applying the defence (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS), for a fixed budget of rounds.

The victim architecture starts from its own initialisation (not ``trained_steps``: utility is what
the federation learns under the defence). The training split is partitioned IID across ``clients``
clients; in each round every client draws a private batch of the attack config's ``batch_size``
from its share and computes its update with :func:`~gradleak.threat.simulate_client`, with the same
update kind, local steps, local lr, local batch size and per-client defences as the attack. The
server averages the updates (under ``secagg`` it learns exactly that average, so secure aggregation
costs no utility) and applies the mean: a FedAvg delta is added, a FedSGD gradient is stepped with
the config's ``local_lr``. The utility is the accuracy on the held-out (test) split, with a 95%
bootstrap interval over the test images (:mod:`gradleak.metrics.intervals`).

Budget: :data:`DEFAULT_ROUNDS` × :data:`DEFAULT_CLIENTS` — chosen where the undefended LeNet on
digits (FedSGD, B ∈ {1, 4, 16}) stops gaining accuracy (README, "Defences: where attacks stop").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..config import AttackConfig
from ..data import ImageDataset, load_dataset
from ..defenses import Defense, build_defenses, mean_updates, split_aggregate
from ..errors import ConfigError, is_int_at_least
from ..metrics.intervals import mean_interval
from ..models import build_model, normalize_input
from ..runtime import set_threads
from ..threat import UpdateConfig, simulate_client

DEFAULT_ROUNDS = 1000
DEFAULT_CLIENTS = 10
# Config options that change what the federation learns; the attack's (threat, inversion, naming)
# do not, so a sweep over them shares one utility per setting.
UTILITY_OPTIONS = ("dataset", "data_dir", "batch_size", "model", "width", "init", "client_mode", "update",
                   "local_steps", "local_lr", "local_batch_size", "defense", "seed")
# Offsets the streams that partition the data, draw batches and draw defence noise from one seed.
_BATCH_OFFSET, _NOISE_OFFSET = 0xB47C, 0x5EED


@dataclass
class Utility:
    """Held-out accuracy after ``rounds`` FedAvg rounds of ``clients`` clients, its 95% bootstrap
    interval over the ``n_test`` test images, chance (1/classes), and the accuracy after some rounds."""

    accuracy: float
    low: float
    high: float
    n_test: int
    chance: float
    rounds: int
    clients: int
    setting: dict[str, Any]
    history: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UtilityBudget:
    """How much training a sweep's utility gets: ``rounds`` × ``clients``, for the attack runs' own
    seeds (``seeds`` None) or for the listed ``seeds`` only (utility then varies over those)."""

    rounds: int = DEFAULT_ROUNDS
    clients: int = DEFAULT_CLIENTS
    seeds: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, raw: Any, where: str = "utility") -> "UtilityBudget":
        """From an experiment file's ``utility: {rounds: R, clients: K, seeds: [..]}`` (one-line errors)."""
        if raw is True or raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a mapping with rounds, clients and optionally seeds")
        unknown = sorted(set(raw) - {"rounds", "clients", "seeds"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (rounds, clients, seeds)")
        rounds, clients = raw.get("rounds", DEFAULT_ROUNDS), raw.get("clients", DEFAULT_CLIENTS)
        for key, value in (("rounds", rounds), ("clients", clients)):
            if not is_int_at_least(value, 1):
                raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}")
        seeds = raw.get("seeds")
        if seeds is not None and (not isinstance(seeds, list) or not seeds
                                  or not all(is_int_at_least(s, 0) for s in seeds)):
            raise ConfigError(f"{where}.seeds must be a non-empty list of seeds, got {seeds!r}")
        return cls(rounds, clients, tuple(seeds) if seeds is not None else None)

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "clients": self.clients,
                **({"seeds": list(self.seeds)} if self.seeds is not None else {})}


def utility_setting(cfg: AttackConfig) -> dict[str, Any]:
    """The options of ``cfg`` that determine its utility (:data:`UTILITY_OPTIONS`)."""
    flat = cfg.to_dict()
    return {k: flat[k] for k in UTILITY_OPTIONS}


def utility_id(cfg: AttackConfig, rounds: int, clients: int) -> str:
    """A stable id of one utility computation: SHA-256 over the setting and the budget."""
    key = {**utility_setting(cfg), "rounds": rounds, "clients": clients}
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def accuracy_per_image(model: nn.Module, data: ImageDataset, chunk: int = 512) -> torch.Tensor:
    """1.0 where ``model`` classifies a held-out image correctly, else 0.0."""
    with torch.no_grad():
        hits = [model(normalize_input(data.images[i:i + chunk], data.mean, data.std)).argmax(1)
                == data.labels[i:i + chunk] for i in range(0, len(data), chunk)]
    return torch.cat(hits).double()


def _recalibrate_bn(model: nn.Module, data: ImageDataset, chunk: int = 512) -> None:
    """Train-mode clients never send BN buffers here: recompute the running statistics over the
    training split (cumulative average) so that evaluation in eval mode matches training."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(data), chunk):
            model(normalize_input(data.images[i:i + chunk], data.mean, data.std))


def _checkpoints(rounds: int) -> set[int]:
    marks = {rounds}
    r = 1
    while r < rounds:
        marks.add(r)
        r *= 2
    return marks


def server_round(model: nn.Module, client_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], update: UpdateConfig,
                 mean=None, std=None, defenses: Sequence[Defense] = (), generator: torch.Generator | None = None,
                 noise: torch.Generator | None = None, data_size: int | None = None) -> list[torch.Tensor]:
    """One FedAvg round in place: each client's update for its batch (``simulate_client`` with the
    per-client ``defenses``), their mean, applied to ``model`` — a FedAvg delta is added, a FedSGD
    gradient stepped with ``update.lr``. Returns the mean update."""
    updates = [simulate_client(model, x, y, update, mean, std, generator=generator, defenses=defenses,
                               defense_generator=noise, data_size=data_size).tensors for x, y in client_batches]
    step = mean_updates(updates)
    scale = -update.lr if update.kind == "fedsgd" else 1.0
    with torch.no_grad():
        for p, s in zip(model.parameters(), step):
            p.add_(s, alpha=scale)
    return step


def fedavg_utility(cfg: AttackConfig, rounds: int = DEFAULT_ROUNDS, clients: int = DEFAULT_CLIENTS,
                   progress: bool = False, data: tuple[ImageDataset, ImageDataset] | None = None) -> Utility:
    """Train ``cfg``'s victim architecture from its initialisation by FedAvg with ``cfg``'s
    defences for ``rounds`` rounds of ``clients`` clients; its accuracy on the test split.

    ``data``: (training, held-out) datasets to use instead of loading ``cfg.data.dataset``.
    Reproducible from ``cfg.run.seed`` (initialisation, partition, batches, defence noise).
    """
    import time

    from tqdm.auto import tqdm

    if not is_int_at_least(rounds, 1) or not is_int_at_least(clients, 1):
        raise ConfigError(f"utility: rounds and clients must be positive integers, got {rounds!r}, {clients!r}")
    started = time.perf_counter()
    train, test = data or (load_dataset(cfg.data.dataset, "train", cfg.data.data_dir),
                           load_dataset(cfg.data.dataset, "test", cfg.data.data_dir))
    b, seed = cfg.data.batch_size, cfg.run.seed
    if clients * b > len(train):
        raise ConfigError(f"utility: {clients} clients × batch {b} need more than the {len(train)} training images "
                          f"of {cfg.data.dataset}")
    v, c = cfg.victim, cfg.client
    model = build_model(v.model, train.input_shape, train.num_classes, v.width, seed=seed, init=v.init)
    set_threads(cfg.run.threads, model)
    model.train(c.client_mode == "train")
    per_client, _ = split_aggregate(build_defenses(c.defense))  # secagg: the server learns the same mean
    update_cfg = UpdateConfig(c.update, c.local_steps, c.local_lr, c.local_batch_size)
    batches = torch.Generator().manual_seed(seed + _BATCH_OFFSET)
    noise = torch.Generator().manual_seed(seed + _NOISE_OFFSET)
    shares = torch.randperm(len(train), generator=batches).chunk(clients)
    history, marks = [], _checkpoints(rounds)
    for r in tqdm(range(1, rounds + 1), disable=not progress, desc="utility (FedAvg rounds)", unit="round",
                  leave=False):
        picks = [share[torch.randperm(len(share), generator=batches)[:b]] for share in shares]
        server_round(model, [(train.images[i], train.labels[i]) for i in picks], update_cfg, train.mean, train.std,
                     per_client, batches, noise, data_size=len(shares[0]))
        if r in marks:
            history.append((r, float(_evaluate(model, train, test, c.client_mode).mean())))
    hits = _evaluate(model, train, test, c.client_mode)
    est = mean_interval(hits.tolist())
    return Utility(est.value, est.low, est.high, len(test), 1.0 / test.num_classes, rounds, clients,
                   utility_setting(cfg), history, time.perf_counter() - started)


def _evaluate(model: nn.Module, train: ImageDataset, test: ImageDataset, client_mode: str) -> torch.Tensor:
    if client_mode == "train":
        import copy

        model = copy.deepcopy(model)
        _recalibrate_bn(model, train)
        model.eval()
    return accuracy_per_image(model, test)


__all__ = ["DEFAULT_CLIENTS", "DEFAULT_ROUNDS", "UTILITY_OPTIONS", "Utility", "UtilityBudget", "accuracy_per_image",
           "fedavg_utility", "server_round", "utility_id", "utility_setting"]
