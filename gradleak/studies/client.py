"""The client and what the server sees of it: the victim, the private batch, the update, the observation."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..config import AttackConfig
from ..data import ImageDataset, load_dataset
from ..defenses import build_defenses, mean_updates, split_aggregate
from ..errors import ConfigError
from ..models import build_model
from ..models.train import train_victim
from ..runtime import resolve_device, set_threads
from ..threat import ClientUpdate, Observation, ThreatModel, UpdateConfig, simulate_client
from .victim_cache import cached_training


@dataclass
class Client:
    """A simulated client: its data, the victim model the server sent, and its private batch."""

    data: ImageDataset
    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    generator: torch.Generator  # draws the client's further private batches, after the first

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Another private batch of the same size (the client's next local batch)."""
        x, y, _ = self.data.sample_batch(self.images.shape[0], self.generator)
        return x, y


def public_split(split: str) -> str:
    """The split the attacker may use as public data: the one the private batch is not drawn from."""
    return "train" if split == "test" else "test"


def set_client_mode(model: nn.Module, mode: str) -> None:
    """The mode the client computes its update in; the server knows it (it ships the training code)."""
    if mode not in ("train", "eval"):
        raise ConfigError(f"unknown client mode {mode!r}; choose train or eval")
    model.train(mode == "train")


def build_victim(cfg: AttackConfig, data: ImageDataset, seed: int, progress: bool = False,
                 public: ImageDataset | None = None) -> nn.Module:
    """The victim ``cfg.victim`` describes, initialised from ``seed`` and trained on ``public`` when asked."""
    v = cfg.victim
    model = build_model(v.model, data.input_shape, data.num_classes, v.width, seed=seed, init=v.init)
    set_threads(cfg.run.threads, model)
    if v.trained_steps:
        public = public or load_dataset(cfg.data.dataset, "train", cfg.data.data_dir)
        settings = {"model": v.model, "width": v.width, "init": v.init, "input_shape": list(data.input_shape),
                    "num_classes": data.num_classes, "seed": seed, "steps": v.trained_steps, "trainer": 1}
        cached_training(model, settings, public.images, public.labels,
                        lambda m: train_victim(m, public.images, public.labels, v.trained_steps, data.mean,
                                               data.std, seed=seed, progress=progress))
    set_client_mode(model, cfg.client.client_mode)
    return model


def prepare_client(cfg: AttackConfig, progress: bool = False) -> Client:
    """Load data, build (and optionally train) the victim, and draw the private batch."""
    data = load_dataset(cfg.data.dataset, cfg.data.split, cfg.data.data_dir)
    if cfg.data.batch_size > len(data):
        raise ConfigError(f"batch size {cfg.data.batch_size} is larger than the {len(data)} images of "
                          f"{cfg.data.dataset} {cfg.data.split}")
    model = build_victim(cfg, data, cfg.run.seed, progress).to(resolve_device(cfg.run.device))  # built on the CPU
    generator = torch.Generator().manual_seed(cfg.run.seed)
    x, y, idx = data.sample_batch(cfg.data.batch_size, generator)
    return Client(data, model, x, y, idx, generator)


def update_config(cfg: AttackConfig) -> UpdateConfig:
    c = cfg.client
    return UpdateConfig(c.update, c.local_steps, c.local_lr, c.local_batch_size)


# Offsets the defences' noise stream from the batch-sampling stream, which also starts at the run seed.
DEFENSE_SEED_OFFSET = 0x5EED
# Offsets the other clients' stream (their batches and noise, under secagg) likewise.
OTHERS_SEED_OFFSET = 0xA66


def client_update(cfg: AttackConfig, client: Client, batch: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> ClientUpdate:
    """The update the honest client sends for its private batch (or for ``batch``), with the
    defences of ``cfg.client.defense`` applied in order. Under ``secagg:N`` with N > 1 the server
    sees an aggregate over other clients' batches too: use :func:`client_update_with_batch`."""
    _, aggregate = split_aggregate(build_defenses(cfg.client.defense))
    if aggregate is not None and aggregate.values["N"] > 1:
        raise ConfigError("secagg: this study attacks one client's batch; the secure aggregate covers N of them")
    return client_update_with_batch(cfg, client, batch)[0]


def client_update_with_batch(cfg: AttackConfig, client: Client,
                             batch: tuple[torch.Tensor, torch.Tensor] | None = None
                             ) -> tuple[ClientUpdate, torch.Tensor, torch.Tensor]:
    """What the server receives for the client's private batch (or ``batch``), and the images and
    labels it covers: ``(update, x, y)``.

    Without ``secagg`` that is the client's own update and batch. With ``secagg:N=n`` (listed last)
    secure aggregation reveals only the sum of n clients' updates and the server divides it by n:
    the update is the MEAN of the n updates (FedSGD: the gradient of the mean loss over all n·B
    examples; FedAvg: the mean delta), each computed with the same model and the per-client
    defences listed before ``secagg``. The other n − 1 clients draw fresh batches of B from the
    same dataset (reproducible from the run seed); ``x``/``y`` are all n·B, this client's first.
    """
    x, y = batch if batch is not None else (client.images, client.labels)
    per_client, aggregate = split_aggregate(build_defenses(cfg.client.defense))
    seed = cfg.run.seed + DEFENSE_SEED_OFFSET
    if per_client and batch is not None:  # a further batch: fresh noise, still reproducible from the run seed
        seed = int(torch.randint(2**62, (1,), generator=client.generator))
    update = _one_client(cfg, client, x, y, per_client, seed)
    n = aggregate.values["N"] if aggregate is not None else 1
    if n > 1:
        b = x.shape[0]
        if n * b > len(client.data):
            raise ConfigError(f"secagg: N·B = {n}·{b} = {n * b} is more than the {len(client.data)} images of "
                              f"{cfg.data.dataset} {cfg.data.split}")
        others_seed = cfg.run.seed + OTHERS_SEED_OFFSET
        if batch is not None:  # further batches: the other clients' fresh batches too
            others_seed = int(torch.randint(2**62, (1,), generator=client.generator))
        others = torch.Generator().manual_seed(others_seed)
        xs, ys, updates = [x], [y], [update]
        for _ in range(n - 1):
            xo, yo, _ = client.data.sample_batch(b, others)
            noise_seed = int(torch.randint(2**62, (1,), generator=others))
            updates.append(_one_client(cfg, client, xo, yo, per_client, noise_seed))
            xs.append(xo)
            ys.append(yo)
        update = _mean_update(updates)
        x, y = torch.cat(xs), torch.cat(ys)
    if aggregate is not None:
        update.defenses = (update.defenses or []) + [aggregate.record(sample_rate=1.0, steps=1)]
    return update, x, y


def _one_client(cfg: AttackConfig, client: Client, x: torch.Tensor, y: torch.Tensor, defenses, seed: int
                ) -> ClientUpdate:
    device = next(client.model.parameters()).device  # the batch stays on the CPU for the evaluator
    return simulate_client(client.model, x.to(device), y.to(device), update_config(cfg), client.data.mean,
                           client.data.std, defenses=defenses, defense_generator=torch.Generator().manual_seed(seed),
                           data_size=len(client.data))


def _mean_update(updates: list[ClientUpdate]) -> ClientUpdate:
    """The mean of the clients' updates; BatchNorm statistics (buffers the server averages too) likewise."""
    first = updates[0]
    bn = None
    if first.bn_stats is not None:
        bn = [(sum(m) / len(updates), sum(v) / len(updates))
              for m, v in (zip(*layer) for layer in zip(*(u.bn_stats for u in updates)))]
    return replace(first, tensors=mean_updates([u.tensors for u in updates]), bn_stats=bn)


def threat_model(cfg: AttackConfig) -> ThreatModel:
    t = cfg.threat
    return ThreatModel(knows_labels=t.knows_labels, knows_bn_stats=t.knows_bn_stats,
                       knows_local_schedule=t.knows_local_schedule, knows_defense=t.knows_defense)


def observe(cfg: AttackConfig, model: nn.Module, data: ImageDataset, update: ClientUpdate, batch_size: int,
            labels: torch.Tensor | None = None) -> Observation:
    """What the server is handed under ``cfg``'s threat model (``labels`` only reach it when granted)."""
    return threat_model(cfg).observe(model, update, data.input_shape, data.num_classes, data.mean, data.std,
                                     batch_size=batch_size, labels=labels, class_names=data.class_names)
