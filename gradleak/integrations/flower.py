"""Eavesdrop on a real Flower federation: what could this server learn from each client's update?

:class:`EavesdroppingStrategy` wraps any Flower message-API strategy (``flwr.serverapp.strategy``,
Flower ≥ 1.21; FedAvg first). Each training round it records the weights θ sent to every node
and the weights θ' each node returns, hands the aggregation to the wrapped strategy untouched,
and queues an attack on every reply with an :class:`Eavesdropper`. The attack runs off the
round's path (:class:`~gradleak.integrations.offpath.OffPathRunner`: bounded queue, own process,
per-attack timeout), so a slow or failing attack never stalls or breaks the federation.

Threat model (ALGORITHMS.md, "Threat model"): the honest-but-curious server knows the
architecture, the weights it sent and every reply; it sees the client's update as the weight
delta Δ = θ' − θ (a FedAvg update; one local SGD step on the whole batch makes it FedSGD, since
−Δ/η is then exactly the batch gradient, Zhu et al. 2019 "Deep Leakage from Gradients"). The
client's local lr/steps are read from the training config the server itself sent and are used
only when :class:`~gradleak.threat.ThreatModel` grants the local schedule; the batch size comes
from the ``num-examples`` metric every FedAvg reply carries. Labels are never granted: they are
recovered from the update.

Ground truth (for scoring, never for attacking): only a simulation knows the client's private
batch. :class:`GroundTruthFolder` reads batches the example clients write to a folder the
*evaluator* reads after the attack has finished; the attack function receives the captured
weights and nothing else.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, GradleakError, UpdateError
from ..pipeline import AttackConfig, AttackOutcome, attack_observation, evaluate_outcome, threat_model
from ..threat import ClientUpdate, Observation
from .offpath import JobRecord, OffPathRunner

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message

try:  # flwr is an optional extra; everything but the strategy wrapper works without it
    from flwr.serverapp.strategy import Strategy as _FlowerStrategy

    HAVE_FLWR = True
except ModuleNotFoundError as _exc:  # pragma: no cover - exercised only without flwr
    if not (_exc.name or "").startswith("flwr"):
        raise
    _FlowerStrategy = object  # type: ignore[assignment,misc]
    HAVE_FLWR = False

FLWR_MISSING = "Flower is not installed; pip install 'gradleak[flower]' (flwr 1.41)"


def require_flwr() -> None:
    """Raise a one-line GradleakError unless flwr can be imported."""
    if not HAVE_FLWR:
        raise GradleakError(FLWR_MISSING)


# --------------------------------------------------------------------------------------------
# What the server knows about the task, and how Flower's arrays map onto the model


@dataclass(frozen=True)
class TaskSpec:
    """What the server knows about the task: the architecture, the input format and the classes."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    class_names: tuple[str, ...] = ()
    width: int | None = None

    @classmethod
    def from_dataset(cls, dataset: str, model: str, width: int | None = None,
                     data_dir: str | None = None) -> "TaskSpec":
        """The task of ``model`` trained on ``dataset`` (shape, classes and normalisation)."""
        from ..data import load_dataset

        data = load_dataset(dataset, "test", data_dir)
        return cls(model, data.input_shape, data.num_classes, data.mean, data.std,
                   tuple(data.class_names), width)

    def build_model(self) -> nn.Module:
        from ..models import build_model

        return build_model(self.model, self.input_shape, self.num_classes, self.width)


Weights = Mapping[str, Any] | Sequence[Any]


def named_state(model: nn.Module, weights: Weights) -> dict[str, torch.Tensor]:
    """Name Flower's arrays after ``model.state_dict()`` entries.

    Arrays keyed by state-dict name (``ArrayRecord(model.state_dict())``) keep their names;
    unnamed ones (``ArrayRecord(list_of_ndarrays)`` keys "0", "1", …) are matched by position,
    to the full state dict or, when there are exactly as many, to the parameters only.
    """
    state_names = list(model.state_dict().keys())
    param_names = [n for n, _ in model.named_parameters()]
    if isinstance(weights, Mapping):
        if set(param_names) <= set(weights):
            return {k: _as_tensor(v) for k, v in weights.items() if k in state_names}
        values = list(weights.values())
    else:
        values = list(weights)
    for names in (state_names, param_names):
        if len(values) == len(names):
            return {n: _as_tensor(v) for n, v in zip(names, values)}
    raise UpdateError(
        f"got {len(values)} arrays but the model has {len(state_names)} state entries and "
        f"{len(param_names)} parameters; the model does not match the federation's"
    )


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.from_numpy(np.array(value, copy=True))


def update_from_weights(
    model: nn.Module,
    global_weights: Weights,
    client_weights: Weights,
    lr: float | None = None,
    local_steps: int = 1,
    local_batch_size: int | None = None,
) -> ClientUpdate:
    """The client's update Δ = θ' − θ, one tensor per ``model.named_parameters()`` entry.

    Buffers (BN running statistics, counters) are not parameters and are left out. The update
    is a FedAvg update with the given schedule; with ``local_steps=1`` on the whole batch,
    ``update.as_gradient()`` = −Δ/η is the client's FedSGD gradient.
    """
    sent, back = named_state(model, global_weights), named_state(model, client_weights)
    names, deltas = [], []
    for name, p in model.named_parameters():
        if name not in sent or name not in back:
            raise UpdateError(f"parameter {name!r} is missing from the federation's arrays")
        # float64 difference: θ' and θ are close, so float32 subtraction would lose digits of Δ.
        delta = back[name].double() - sent[name].double()
        names.append(name)
        deltas.append(delta.to(p.dtype))
    update = ClientUpdate("fedavg", names, deltas, int(local_steps), lr, local_batch_size)
    update.validate(model)
    return update


def load_weights(model: nn.Module, weights: Weights, with_buffers: bool) -> nn.Module:
    """Load θ into ``model``: parameters always, buffers (BN statistics) only when asked."""
    state = named_state(model, weights)
    params = {n for n, _ in model.named_parameters()}
    keep = {k: v for k, v in state.items() if with_buffers or k in params}
    missing = params - set(keep)
    if missing:
        raise UpdateError(f"parameter(s) {', '.join(sorted(missing))} missing from the global weights")
    current = model.state_dict()
    for k, v in keep.items():
        current[k] = v.to(current[k].dtype).reshape(current[k].shape)
    model.load_state_dict(current)
    return model


# --------------------------------------------------------------------------------------------
# One captured reply, and the attacker's view of it


@dataclass
class LocalSchedule:
    """Where the server reads the client's local schedule: the training config it sent.

    The keys are the ones the server's own ``train_config`` uses; absent keys fall back to the
    defaults here (``lr=None``: unknown, the update is then read as −Δ, right up to scale).
    """

    lr_key: str = "lr"
    steps_key: str = "local-steps"
    batch_key: str = "local-batch-size"
    lr: float | None = None
    local_steps: int = 1

    def read(self, train_config: Mapping[str, Any]) -> tuple[float | None, int, int | None]:
        lr = train_config.get(self.lr_key, self.lr)
        steps = train_config.get(self.steps_key, self.local_steps)
        mb = train_config.get(self.batch_key)
        return (float(lr) if lr is not None else None), int(steps), (int(mb) if mb else None)


@dataclass
class CapturedUpdate:
    """What the server holds after one node's training reply: θ sent, θ' returned, and metadata."""

    server_round: int
    node_id: int
    global_weights: dict[str, np.ndarray]
    client_weights: dict[str, np.ndarray]
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.server_round, self.node_id)

    def num_examples(self, key: str = "num-examples") -> int | None:
        value = self.metrics.get(key)
        return int(value) if value is not None else None

    def save(self, path: str | Path) -> Path:
        """Write the capture as one ``.npz`` (arrays) with its metadata as JSON inside."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"global/{k}": v for k, v in self.global_weights.items()}
        arrays.update({f"client/{k}": v for k, v in self.client_weights.items()})
        meta = {"server_round": self.server_round, "node_id": self.node_id, "train_config": self.train_config,
                "metrics": self.metrics, "order": list(self.global_weights)}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CapturedUpdate":
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            order = meta["order"]
            return cls(meta["server_round"], meta["node_id"],
                       {k: data[f"global/{k}"] for k in order}, {k: data[f"client/{k}"] for k in order},
                       meta["train_config"], meta["metrics"])


def observe_capture(capture: CapturedUpdate, task: TaskSpec, cfg: AttackConfig,
                    schedule: LocalSchedule = LocalSchedule()) -> Observation:
    """The attacker's view of one capture under the threat model of ``cfg``."""
    if cfg.knows_labels:
        raise ConfigError("a Flower server never sees client labels; knows_labels is not supported here")
    # The server sent θ and the BN buffers itself, so it always knows both.
    model = load_weights(task.build_model(), capture.global_weights, with_buffers=True)
    model.train()  # the example clients train in train mode, and the server ships their training code
    lr, steps, mb = schedule.read(capture.train_config)
    update = update_from_weights(model, capture.global_weights, capture.client_weights, lr, steps, mb)
    return threat_model(cfg).observe(model, update, task.input_shape, task.num_classes, task.mean, task.std,
                                     batch_size=capture.num_examples(), class_names=list(task.class_names) or None)


def attack_capture(capture: CapturedUpdate, task: TaskSpec, cfg: AttackConfig,
                   schedule: LocalSchedule = LocalSchedule()) -> AttackOutcome:
    """The attacker's whole path: captured weights in, recovered labels and images out.

    Seeded by ``cfg.seed``; the global RNG state of the process it runs in (maybe the live
    server's) is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return attack_observation(observe_capture(capture, task, cfg, schedule), cfg, progress=False)


# --------------------------------------------------------------------------------------------
# Ground truth (evaluator only) and where results go


def truth_path(folder: str | Path, server_round: int, node_id: int) -> Path:
    return Path(folder) / f"round{int(server_round):03d}-node{int(node_id)}.npz"


def write_ground_truth(folder: str | Path, server_round: int, node_id: int,
                       images: torch.Tensor, labels: torch.Tensor) -> Path:
    """Demo clients only: leave the private batch where the evaluator (not the attacker) reads it."""
    path = truth_path(folder, server_round, node_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=images.detach().cpu().numpy(), labels=labels.detach().cpu().numpy())
    tmp.replace(path)
    return path


class GroundTruth(Protocol):
    def __call__(self, capture: CapturedUpdate) -> tuple[torch.Tensor, torch.Tensor] | None: ...


@dataclass
class GroundTruthFolder:
    """Reads the batch a demo client wrote with :func:`write_ground_truth` (None when absent)."""

    folder: Path
    wait_s: float = 5.0  # the client writes before replying; allow for a slow file system

    def __call__(self, capture: CapturedUpdate) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = truth_path(self.folder, capture.server_round, capture.node_id)
        deadline = time.monotonic() + self.wait_s
        while not path.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            return torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]).long()


@dataclass
class LeakRecord:
    """What leaked from one node in one round (one row of the results store)."""

    server_round: int
    node_id: int
    status: str  # done | failed | timeout | skipped
    error: str | None = None
    recovered_labels: list[int] | None = None
    label_method: str | None = None
    true_labels: list[int] | None = None
    label_accuracy: float | None = None
    ssim: float | None = None
    psnr: float | None = None
    grid: str | None = None
    attack_seconds: float | None = None
    num_examples: int | None = None
    lr: float | None = None
    local_steps: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResultSink(Protocol):
    def write(self, record: LeakRecord, config: dict[str, Any]) -> None: ...


@dataclass
class JsonlSink:
    """One JSON line per record: what ``gradleak flower-demo`` prints after the run."""

    path: Path

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # several attack workers may finish at once

    def write(self, record: LeakRecord, config: dict[str, Any]) -> None:
        line = json.dumps(record.to_dict(), allow_nan=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(line)


@dataclass
class StoreSink:
    """Rows in the results store the sweeps use (:mod:`gradleak.experiments.store`).

    One run per (round, node), id ``flower/<run_tag>/round<r>/node<n>``; statuses other than
    ``done`` are stored as failed runs whose error starts with the status.
    """

    path: Path
    run_tag: str = "run"
    experiment: str = "flower"

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def write(self, record: LeakRecord, config: dict[str, Any]) -> None:
        from ..experiments.store import ResultStore

        flat = {**config.get("attack", {}), "flower": config.get("flower", {}), "task": config.get("task", {})}
        flat["batch_size"] = record.num_examples
        flat["update"] = "fedsgd" if record.local_steps == 1 else "fedavg"
        run_id = f"flower/{self.run_tag}/round{record.server_round:03d}/node{record.node_id}"
        summary = dict(record.summary) if record.status == "done" else None
        if summary is not None:
            summary.update(grid=record.grid, status=record.status)
        error = None if summary is not None else f"{record.status}: {record.error}"
        with self._lock:  # sqlite connections stay in the thread that made them: one per write
            with ResultStore(self.path) as store:
                store.record(run_id, flat, summary=summary, error=error, experiment=self.experiment)


def store_sinks(path: str | Path | None, run_tag: str = "run") -> list[ResultSink]:
    """A :class:`StoreSink` for ``path`` (a ``.sqlite`` file or a folder), or none when empty."""
    return [StoreSink(Path(path), str(run_tag))] if path else []


def read_leaks(path: str | Path) -> list[LeakRecord]:
    """The records a :class:`JsonlSink` wrote, in order."""
    path = Path(path)
    if not path.is_file():
        return []
    return [LeakRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# The eavesdropper: queue attacks off-path, score them, store them


@dataclass
class EavesdropConfig:
    """How the eavesdropper runs: the attack and threat model, the bounds, and where results go."""

    attack: AttackConfig = field(default_factory=AttackConfig)
    schedule: LocalSchedule = field(default_factory=LocalSchedule)
    timeout_s: float = 300.0  # per attack
    max_pending: int = 4  # queued attacks beyond this are skipped, never waited for
    workers: int = 1
    isolation: str = "process"  # "process" (killable on timeout) | "thread"
    attack_threads: int | None = 1  # torch threads in the attack process (tiny models: 1 is fastest)
    out_dir: Path | None = None  # grids, captures, leaks.jsonl
    save_captures: bool = False


# Imported by attack workers before they take jobs, so imports never count against a timeout.
_ATTACK_MODULES = ("gradleak.attacks.labels", "gradleak.attacks.inversion")

AttackFn = Callable[[CapturedUpdate, TaskSpec, AttackConfig, LocalSchedule], AttackOutcome]


class Eavesdropper:
    """Turns captured replies into attacks run off the round's path, then scores and stores them.

    ``attack_fn`` is the attacker (default :func:`attack_capture`); it must be a module-level
    function when attacks run in a process. ``ground_truth`` is the evaluator's side channel.
    """

    def __init__(
        self,
        task: TaskSpec,
        config: EavesdropConfig = EavesdropConfig(),
        ground_truth: GroundTruth | None = None,
        sinks: Sequence[ResultSink] = (),
        attack_fn: AttackFn = attack_capture,
    ) -> None:
        if config.attack.knows_labels:
            raise ConfigError("a Flower server never sees client labels; knows_labels is not supported here")
        self.task = task
        self.config = config
        self.ground_truth = ground_truth
        self.sinks = list(sinks)
        out = Path(config.out_dir) if config.out_dir is not None else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self.sinks.append(JsonlSink(out / "leaks.jsonl"))
        self.out_dir = out
        self.attack_fn = attack_fn
        self.records: list[LeakRecord] = []
        self._captures: dict[tuple[int, int], CapturedUpdate] = {}
        self._lock = threading.Lock()
        self._score_lock = threading.Lock()  # pyplot is not thread-safe; scoring is cheap anyway
        self._runner = OffPathRunner(self._on_record, config.workers, config.max_pending, config.timeout_s,
                                     config.isolation, config.attack_threads,
                                     preload=(attack_fn.__module__, *_ATTACK_MODULES))

    def capture(self, capture: CapturedUpdate) -> bool:
        """Queue an attack on ``capture``; never blocks and never raises."""
        try:
            with self._lock:
                self._captures[capture.key] = capture
            if self.config.save_captures and self.out_dir is not None:
                capture.save(self.out_dir / "captures" / f"round{capture.server_round:03d}-node{capture.node_id}.npz")
            return self._runner.submit(capture.key, self.attack_fn, capture, self.task, self.config.attack,
                                       self.config.schedule)
        except Exception as exc:  # noqa: BLE001 - the federation must go on
            self._on_record(JobRecord(capture.key, "failed", error=f"capture failed: {type(exc).__name__}: {exc}"))
            return False

    def skip(self, key: tuple[int, int], reason: str) -> None:
        """Record that the reply ``key`` = (round, node) was not attacked, and why."""
        self._on_record(JobRecord(key, "skipped", error=reason))

    def close(self, timeout_s: float | None = None) -> list[LeakRecord]:
        """Wait (at most ``timeout_s``) for queued attacks, then return every record so far."""
        self._runner.close(timeout_s)
        with self._lock:
            return list(self.records)

    def _on_record(self, job: JobRecord) -> None:
        with self._lock:
            capture = self._captures.pop(job.key, None)
        server_round, node_id = job.key
        record = LeakRecord(server_round, node_id, job.status, job.error, attack_seconds=job.seconds or None)
        if capture is not None:
            lr, steps, _ = self.config.schedule.read(capture.train_config)
            record.num_examples, record.lr, record.local_steps = capture.num_examples(), lr, steps
        if job.status == "done":
            try:
                with self._score_lock:
                    self._score(record, capture, job.result)
            except Exception as exc:  # noqa: BLE001 - a scoring failure is a result, not a crash
                record.status, record.error = "failed", f"scoring failed: {type(exc).__name__}: {exc}"
        config = {"attack": self.config.attack.to_dict(), "task": asdict(self.task),
                  "flower": {"server_round": server_round, "node_id": node_id, "lr": record.lr,
                             "local_steps": record.local_steps, "num_examples": record.num_examples}}
        with self._lock:
            self.records.append(record)
        for sink in self.sinks:
            try:
                sink.write(record, config)
            except Exception:  # noqa: BLE001
                traceback.print_exc()

    def _score(self, record: LeakRecord, capture: CapturedUpdate | None, outcome: AttackOutcome) -> None:
        from ..pipeline import AttackResult, write_outputs
        from ..viz import save_grid

        record.recovered_labels = [int(v) for v in outcome.labels.tolist()]
        record.label_method = outcome.label_method
        truth = self.ground_truth(capture) if (self.ground_truth is not None and capture is not None) else None
        folder = (self.out_dir / f"round{record.server_round:03d}" / f"node{record.node_id}"
                  if self.out_dir is not None else None)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        if truth is None:
            record.summary = {"recovered_labels": record.recovered_labels, "label_method": outcome.label_method,
                              "matching_loss": outcome.reconstruction.matching_loss, "seconds": outcome.seconds}
            if folder is not None:
                names = list(self.task.class_names)
                caption = [names[i] if i < len(names) else str(i) for i in record.recovered_labels]
                record.grid = str(save_grid(folder / "grid.png", [outcome.reconstruction.images], [caption],
                                            row_titles=["reconstruction"]))
            return
        x, y = truth
        if tuple(x.shape[1:]) != tuple(self.task.input_shape) or len(x) != len(outcome.labels):
            raise UpdateError(f"ground truth of shape {tuple(x.shape)} does not fit the reconstruction "
                              f"{tuple(outcome.reconstruction.images.shape)}")
        summary = evaluate_outcome(outcome, x.float(), y, self.task.num_classes)
        record.summary = summary
        record.true_labels = summary["true_labels"]
        record.label_accuracy = summary["label_accuracy"]
        record.ssim, record.psnr = summary["ssim"], summary["psnr"]
        if folder is not None:
            write_outputs(AttackResult(summary, x.float(), outcome.reconstruction.images,
                                       list(self.task.class_names)), folder)
            record.grid = str(folder / "grid.png")


# --------------------------------------------------------------------------------------------
# The strategy wrapper


def _record_to_numpy(record: "ArrayRecord") -> dict[str, np.ndarray]:
    return {k: np.array(v.numpy(), copy=True) for k, v in record.items()}


def _plain(record: Any) -> dict[str, Any]:
    return dict(record.items()) if record is not None else {}


class EavesdroppingStrategy(_FlowerStrategy):
    """Any Flower message-API strategy, plus a curious server reading every training reply.

    Every call is delegated to ``strategy``; ``aggregate_train`` gets the very replies it would
    have got, and its return value is passed back unchanged. Capturing costs one copy of the
    arrays per reply on the round's path; attacking happens in the :class:`Eavesdropper`'s
    off-path workers.
    """

    def __init__(self, strategy: "_FlowerStrategy", eavesdropper: Eavesdropper) -> None:
        require_flwr()
        self.strategy = strategy
        self.eavesdropper = eavesdropper
        self._sent: dict[tuple[int, int], tuple[dict[str, np.ndarray], dict[str, Any]]] = {}

    def __getattr__(self, name: str) -> Any:
        # Attributes the wrapped strategy has (weighted_by_key, fractions, …) read through.
        if name in ("strategy", "eavesdropper", "_sent"):
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: "ArrayRecord", config: "ConfigRecord", grid
    ) -> Iterable["Message"]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        try:
            snapshots: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
            for msg in messages:
                content = msg.content
                if id(content) not in snapshots:  # FedAvg sends every node the same RecordDict
                    record = self._pick(content.array_records, "arrayrecord_key")
                    conf = self._pick(content.config_records, "configrecord_key")
                    snapshots[id(content)] = (_record_to_numpy(record) if record is not None else {}, _plain(conf))
                self._sent[(server_round, int(msg.metadata.dst_node_id))] = snapshots[id(content)]
        except Exception:  # noqa: BLE001 - eavesdropping must never break the round
            traceback.print_exc()
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable["Message"]):
        replies = list(replies)  # may be a one-shot iterator; the wrapped strategy gets the same list
        for reply in replies:
            try:
                self._capture(server_round, reply)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
        self._sent = {k: v for k, v in self._sent.items() if k[0] > server_round}
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)

    def _pick(self, records: Mapping[str, Any], key_attr: str):
        key = getattr(self.strategy, key_attr, None)
        if key is not None and key in records:
            return records[key]
        return next(iter(records.values()), None)

    def _capture(self, server_round: int, reply: "Message") -> None:
        node_id = int(reply.metadata.src_node_id)
        if reply.has_error():
            self.eavesdropper.skip((server_round, node_id), f"client replied with an error: {reply.error.reason}")
            return
        sent = self._sent.get((server_round, node_id))
        record = self._pick(reply.content.array_records, "arrayrecord_key")
        if sent is None or record is None:
            self.eavesdropper.skip((server_round, node_id), "no weights sent to or returned by this node")
            return
        metrics = next(iter(reply.content.metric_records.values()), None)
        self.eavesdropper.capture(CapturedUpdate(server_round, node_id, sent[0], _record_to_numpy(record),
                                                 dict(sent[1]), _plain(metrics)))


def eavesdrop(strategy: "_FlowerStrategy", task: TaskSpec, config: EavesdropConfig = EavesdropConfig(),
              ground_truth: GroundTruth | None = None, sinks: Sequence[ResultSink] = ()) -> EavesdroppingStrategy:
    """Wrap ``strategy`` so that every training reply is attacked as ``config`` says."""
    return EavesdroppingStrategy(strategy, Eavesdropper(task, config, ground_truth, sinks))


__all__ = [
    "FLWR_MISSING", "HAVE_FLWR", "CapturedUpdate", "EavesdropConfig", "Eavesdropper", "EavesdroppingStrategy",
    "GroundTruthFolder", "JsonlSink", "LeakRecord", "LocalSchedule", "ResultSink", "StoreSink", "TaskSpec",
    "attack_capture", "eavesdrop", "load_weights", "named_state", "observe_capture", "read_leaks", "require_flwr",
    "store_sinks", "truth_path", "update_from_weights", "write_ground_truth",
]
