"""The curious server's side: attack captured updates off the round's path, score and store them.

:class:`Eavesdropper` turns every :class:`~gradleak.integrations.capture.CapturedUpdate` into an
attack run by an :class:`~gradleak.integrations.offpath.OffPathRunner` (bounded queue, own
process, per-attack timeout), so a slow or failing attack never stalls or breaks the federation;
each result becomes a :class:`LeakRecord`, handed to the result sinks (:class:`JsonlSink`,
:class:`StoreSink`). Nothing here imports a federated-learning framework: the Flower glue is
:mod:`gradleak.integrations.flower`.

Threat model (ALGORITHMS.md, "Threat model"): the honest-but-curious server knows the
architecture, the weights it sent and every reply; it sees the client's update as the weight
delta Δ = θ' − θ (:func:`~gradleak.integrations.weights.update_from_weights`). The client's local
schedule (lr, local steps or epochs, mini-batch) is read from the training config the server itself
sent (:class:`~gradleak.integrations.weights.LocalSchedule`) and is used only when
:class:`~gradleak.threat.ThreatModel` grants the local schedule; the batch size comes from the
``num-examples`` metric every FedAvg reply carries. Labels are never granted: they are recovered
from the update. The ground truth scores an attack after it has finished; the attack function
receives the captured weights and nothing else.

With ``save_captures`` every capture is also written, whatever became of its attack, as a
recorded-update file (:func:`~gradleak.integrations.capture.save_capture`: θ, Δ, the schedule and
the task's facts, plus the evaluator's ground truth when it has it) that ``gradleak attack
--observed-update`` replays.
"""

from __future__ import annotations

import json
import threading
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from ..errors import ConfigError, UpdateError
from ..config import AttackConfig
from ..studies.attack import AttackOutcome, AttackResult, attack_observation
from ..studies.client import set_client_mode, threat_model
from ..studies.evaluate import evaluate_outcome
from ..studies.outputs import write_outputs
from ..studies.side import AttackerSide
from ..threat import Observation
from .capture import CapturedUpdate, GroundTruth, capture_path, save_capture
from .offpath import JobRecord, OffPathRunner
from .weights import LocalSchedule, TaskSpec

# --------------------------------------------------------------------------------------------
# The attacker's view of one capture, and its attack


def observe_capture(capture: CapturedUpdate, task: TaskSpec, cfg: AttackConfig,
                    schedule: LocalSchedule = LocalSchedule()) -> Observation:
    """The attacker's view of one capture under the threat model of ``cfg``."""
    if cfg.threat.knows_labels:
        raise ConfigError("a Flower server never sees client labels; knows_labels is not supported here")
    model, update = capture.model_and_update(task, schedule)  # θ and the BN buffers: the server sent them
    set_client_mode(model, cfg.client.client_mode)  # the clients' train/eval mode: the server ships their code
    return threat_model(cfg).observe(model, update, task.input_shape, task.num_classes, task.mean, task.std,
                                     batch_size=capture.num_examples(), class_names=list(task.class_names) or None)


def attack_capture(capture: CapturedUpdate, task: TaskSpec, cfg: AttackConfig,
                   schedule: LocalSchedule = LocalSchedule()) -> AttackOutcome:
    """The attacker's whole path: captured weights in, recovered labels and images out.

    Seeded by ``cfg.run.seed``; the global RNG state of the process it runs in (maybe the live
    server's) is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        obs = observe_capture(capture, task, cfg, schedule)
        return attack_observation(obs, cfg, AttackerSide(cfg, None), progress=False)


# --------------------------------------------------------------------------------------------
# What leaked, and where results go


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
    capture: str | None = None  # the saved capture (a recorded-update file), when captures are saved
    attack_seconds: float | None = None
    num_examples: int | None = None
    lr: float | None = None
    local_steps: int | None = None
    local_batch_size: int | None = None  # None: every local step on the whole batch
    summary: dict[str, Any] = field(default_factory=dict)
    observed: str | None = None  # what the server held: "individual reply …" or "aggregate of N clients"

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
        whole = not record.local_batch_size or record.local_batch_size >= (record.num_examples or 0)
        flat["update"] = "fedsgd" if record.local_steps == 1 and whole else "fedavg"
        if record.local_steps is not None:  # the schedule observed in the server's train config
            flat["local_steps"], flat["local_batch_size"] = record.local_steps, record.local_batch_size
        run_id = f"flower/{self.run_tag}/round{record.server_round:03d}/node{record.node_id}"
        summary = dict(record.summary) if record.status == "done" else None
        if summary is not None:
            summary.update(grid=record.grid, capture=record.capture, status=record.status)
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

    # client_mode train: Flower clients train with model.train(); set eval if yours do not.
    attack: AttackConfig = field(default_factory=lambda: AttackConfig.from_dict({"client_mode": "train"}, check=False))
    schedule: LocalSchedule = field(default_factory=LocalSchedule)
    timeout_s: float = 300.0  # per attack
    max_pending: int = 4  # queued attacks beyond this are skipped, never waited for
    workers: int = 1
    isolation: str = "process"  # "process" (killable on timeout) | "thread"
    attack_threads: int | None = 1  # torch threads in the attack process (tiny models: 1 is fastest)
    out_dir: Path | None = None  # grids, captures, leaks.jsonl
    save_captures: bool = False  # write every capture to out_dir/captures as a recorded-update file
    # Captures of rounds before this one are neither attacked nor recorded: the global model trains
    # first (the setting users report: a model trained for some rounds, then attacked).
    first_round: int = 1


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
        if config.attack.threat.knows_labels:
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
        """Queue an attack on ``capture``; never blocks and never raises. Rounds before
        ``config.first_round`` are let through unattacked (False)."""
        if capture.server_round < self.config.first_round:
            return False
        try:
            with self._lock:
                self._captures[capture.key] = capture
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
        truth, truth_error = None, None
        if capture is not None:
            lr, steps, mb = self.config.schedule.read(capture.train_config, capture.examples_per_client())
            record.num_examples, record.lr, record.local_steps = capture.num_examples(), lr, steps
            record.local_batch_size = mb
            record.observed = capture.observed
            # The evaluator's side channel, read only now that the attack is over.
            if self.ground_truth is not None and (job.status == "done" or self._saves_captures):
                try:
                    truth = self.ground_truth(capture)
                except Exception as exc:  # noqa: BLE001
                    truth_error = f"{type(exc).__name__}: {exc}"
            if self._saves_captures:
                self._save_capture(record, capture, truth)
        if job.status == "done":
            try:
                if truth_error is not None:
                    raise UpdateError(f"ground truth unreadable: {truth_error}")
                with self._score_lock:
                    self._score(record, job.result, truth)
            except Exception as exc:  # noqa: BLE001 - a scoring failure is a result, not a crash
                record.status, record.error = "failed", f"scoring failed: {type(exc).__name__}: {exc}"
        config = {"attack": self.config.attack.to_dict(), "task": asdict(self.task),
                  "flower": {"server_round": server_round, "node_id": node_id, "lr": record.lr,
                             "local_steps": record.local_steps, "local_batch_size": record.local_batch_size,
                             "num_examples": record.num_examples,
                             "observed": record.observed}}
        with self._lock:
            self.records.append(record)
        for sink in self.sinks:
            try:
                sink.write(record, config)
            except Exception:  # noqa: BLE001
                traceback.print_exc()

    @property
    def _saves_captures(self) -> bool:
        return self.config.save_captures and self.out_dir is not None

    def _save_capture(self, record: LeakRecord, capture: CapturedUpdate,
                      truth: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """Save the capture, whatever became of its attack, with the ground truth when the evaluator has it."""
        try:
            path = capture_path(self.out_dir / "captures", capture.server_round, capture.node_id)
            record.capture = str(save_capture(path, capture, self.task, self.config.attack, self.config.schedule,
                                              truth))
        except Exception:  # noqa: BLE001 - a capture that cannot be saved must not lose the record
            traceback.print_exc()

    def _score(self, record: LeakRecord, outcome: AttackOutcome,
               truth: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        from ..viz import save_grid  # matplotlib: imported only when a result is scored

        record.recovered_labels = [int(v) for v in outcome.labels.tolist()]
        record.label_method = outcome.label_method
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



__all__ = [
    "AttackConfig",  # re-exported: server apps configure the attack from here
    "AttackFn", "EavesdropConfig", "Eavesdropper", "JsonlSink", "LeakRecord", "ResultSink", "StoreSink",
    "attack_capture", "observe_capture", "read_leaks", "store_sinks",
]
