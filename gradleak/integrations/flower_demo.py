"""``gradleak flower-demo``: a real Flower federation on loopback, attacked by its own server.

Starts a SuperLink and ``clients`` SuperNodes (:class:`~.flower_local.LocalFederation`), runs the
example app shipped with the package, ``gradleak/integrations/flower_app`` (FedAvg wrapped in an
:class:`~.flower.EavesdroppingStrategy`), and reports what leaked from every client in every
round. Everything is bounded by one ``timeout_s``; every process started is ended, on success,
error or timeout.

The demo runs the SuperLink and SuperNodes on 127.0.0.1 with TLS off (Flower's ``--insecure``),
loopback only; a real deployment must run Flower with TLS certificates (see Flower's "Enable TLS
connections", https://flower.ai/docs/framework/how-to-enable-tls-connections.html).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, GradleakError
from .eavesdropper import LeakRecord, read_leaks
from .flower import require_flwr
from .flower_local import LocalFederation

STARTUP_SHARE = 0.3  # at most this share of the budget for starting the federation
DRAIN_MARGIN_S = 10.0  # the server stops waiting for attacks this long before the demo's deadline
# The example Flower app, shipped as package data (its pyproject.toml and gradleak_flower_app/).
EXAMPLE_APP = Path(__file__).resolve().parent / "flower_app"


@dataclass
class FlowerDemoConfig:
    """Options of ``gradleak flower-demo`` (the CLI fills these 1:1)."""

    rounds: int = 3
    clients: int = 2
    batch_size: int = 4
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "lenet"
    init: str | None = None  # the server's initial global model (models.INITS); None: the model's usual one
    attack: str = "ig"
    iterations: int = 300
    lr: float = 0.1
    local_steps: int = 1
    seed: int = 0
    out: Path = Path("runs/flower-demo")
    timeout_s: float = 300.0
    attack_timeout_s: float | None = None  # per attack; None: the whole budget
    isolation: str = "process"
    save_captures: bool = False
    app: Path | None = None  # None: the app shipped with gradleak (EXAMPLE_APP)

    def validate(self) -> None:
        if self.rounds < 1 or self.clients < 1 or self.batch_size < 1 or self.iterations < 1:
            raise ConfigError("rounds, clients, batch size and iterations must all be at least 1")
        if self.local_steps < 1 or not self.lr > 0:
            raise ConfigError("local steps must be at least 1 and lr positive")
        if not self.timeout_s > 0:
            raise ConfigError("timeout must be positive")
        if self.init is not None:
            from ..models import INITS

            INITS.get(self.init)


@dataclass
class FlowerDemoResult:
    """What the demo saw: one :class:`LeakRecord` per (round, node), and how long it took."""

    config: FlowerDemoConfig
    records: list[LeakRecord]
    clients: dict[int, int] = field(default_factory=dict)  # Flower node id → client (partition) index
    seconds: float = 0.0
    startup_seconds: float = 0.0
    run_seconds: float = 0.0
    returncode: int | None = None
    error: str | None = None
    logs: Path | None = None

    @property
    def store(self) -> Path:
        return self.config.out / "results.sqlite"


def find_example_app(app: str | Path | None = None) -> Path:
    """The Flower app to run: ``app`` when given, else the one shipped in the package (:data:`EXAMPLE_APP`)."""
    path = Path(app) if app is not None else EXAMPLE_APP
    if not (path / "pyproject.toml").is_file():
        hint = "pass --app PATH to a Flower app folder" if app is not None else "reinstall gradleak or pass --app PATH"
        raise GradleakError(f"Flower app not found at {path} (no pyproject.toml); {hint}")
    return path.resolve()


def demo_run_config(cfg: FlowerDemoConfig, deadline_unix: float) -> dict:
    out = cfg.out.resolve()
    return {
        "num-server-rounds": cfg.rounds, "min-nodes": cfg.clients, "dataset": cfg.dataset,
        "data-dir": str(Path(cfg.data_dir).resolve()) if cfg.data_dir else "", "model": cfg.model,
        "init": cfg.init or "", "batch-size": cfg.batch_size, "lr": cfg.lr, "local-steps": cfg.local_steps, "seed": cfg.seed,
        "attack": cfg.attack, "iterations": cfg.iterations,
        "attack-timeout": float(cfg.attack_timeout_s or cfg.timeout_s),
        "attack-isolation": cfg.isolation, "max-pending": cfg.rounds * cfg.clients,
        "drain-timeout": float(cfg.timeout_s), "drain-deadline": float(deadline_unix),
        "out-dir": str(out), "store": str(out / "results.sqlite"), "truth-dir": str(out / "truth"),
        "save-captures": cfg.save_captures,
    }


def run_flower_demo(cfg: FlowerDemoConfig) -> FlowerDemoResult:
    """Run the demo; never leaves a process behind. A timeout is reported in ``result.error``."""
    require_flwr()
    cfg.validate()
    app = find_example_app(cfg.app)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    # Results of an earlier demo in the same folder would mix with this one's.
    for stale in ("leaks.jsonl", "results.sqlite", "results.sqlite-wal", "results.sqlite-shm"):
        (out / stale).unlink(missing_ok=True)
    for stale in ("truth", "captures"):
        shutil.rmtree(out / stale, ignore_errors=True)
    for old in out.glob("round[0-9][0-9][0-9]"):
        shutil.rmtree(old, ignore_errors=True)

    started = time.perf_counter()
    deadline = time.monotonic() + cfg.timeout_s
    result = FlowerDemoResult(cfg, [], logs=out / "logs")
    fed = LocalFederation(cfg.clients, log_dir=out / "logs", start_timeout_s=STARTUP_SHARE * cfg.timeout_s)
    with _sigterm_as_exit():
        _run(cfg, app, fed, result, started, deadline)
    result.records = sorted(read_leaks(out / "leaks.jsonl"), key=lambda r: (r.server_round, r.node_id))
    return result


@contextlib.contextmanager
def _sigterm_as_exit():
    """Turn SIGTERM into SystemExit so that ``finally`` blocks end the federation's processes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(cfg: FlowerDemoConfig, app: Path, fed: LocalFederation, result: FlowerDemoResult,
         started: float, deadline: float) -> None:
    try:
        fed.start()
        result.clients = dict(fed.node_ids)
        result.startup_seconds = time.perf_counter() - started
        remaining = deadline - time.monotonic()
        run_config = demo_run_config(cfg, time.time() + remaining - DRAIN_MARGIN_S)
        run_started = time.perf_counter()
        try:
            outcome = fed.run(app, run_config, timeout_s=remaining)
            result.returncode = outcome.returncode
            if not outcome.ok:
                result.error = (f"the Flower run ended {outcome.status or 'with an unknown status'} "
                                f"(flwr run exit status {outcome.returncode}); see {outcome.log}")
        except GradleakError as exc:
            result.error = str(exc)
        result.run_seconds = time.perf_counter() - run_started
    finally:
        fed.close()
        result.seconds = time.perf_counter() - started


def _labels(values: list[int] | None) -> str:
    return "-" if values is None else "[" + " ".join(str(v) for v in values) + "]"


def format_report(result: FlowerDemoResult) -> str:
    """The per-round, per-client table the CLI prints, with a summary line and the wall time."""
    cfg = result.config
    kind = "FedSGD" if cfg.local_steps == 1 else f"FedAvg ({cfg.local_steps} local steps)"
    lines = [
        f"Flower federation on 127.0.0.1: {cfg.clients} clients × {cfg.rounds} rounds, {cfg.dataset}/{cfg.model}, "
        f"B={cfg.batch_size}, {kind} lr={cfg.lr}; server attack {cfg.attack} × {cfg.iterations} it",
        f"{'round':>5}  {'client':>6}  {'status':<8} {'recovered':<{2 * cfg.batch_size + 3}} "
        f"{'true':<{2 * cfg.batch_size + 3}} {'labels':>6}  {'SSIM':>6}  grid",
    ]
    order = sorted(result.records, key=lambda r: (r.server_round, result.clients.get(r.node_id, r.node_id)))
    for r in order:
        client = result.clients.get(r.node_id)
        who = str(client) if client is not None else f"n{r.node_id}"
        acc = f"{r.label_accuracy:.2f}" if r.label_accuracy is not None else "-"
        ssim = f"{r.ssim:.3f}" if r.ssim is not None else "-"
        tail = r.grid or (r.error or "")
        lines.append(f"{r.server_round:>5}  {who:>6}  {r.status:<8} {_labels(r.recovered_labels):<{2 * cfg.batch_size + 3}} "
                     f"{_labels(r.true_labels):<{2 * cfg.batch_size + 3}} {acc:>6}  {ssim:>6}  {tail}")
    done = [r for r in result.records if r.status == "done" and r.label_accuracy is not None]
    expected = cfg.rounds * cfg.clients
    if done:
        mean_acc = sum(r.label_accuracy for r in done) / len(done)
        mean_ssim = sum(r.ssim for r in done) / len(done)
        lines.append(f"leaked: mean label accuracy {mean_acc:.2f}, mean SSIM {mean_ssim:.3f} over {len(done)} of "
                     f"{expected} client updates")
    else:
        lines.append(f"no attack finished ({len(result.records)} of {expected} updates recorded)")
    lines.append(f"results store {result.store}; logs {result.logs}")
    lines.append(f"wall time {result.seconds:.1f} s (federation start {result.startup_seconds:.1f} s, "
                 f"flwr run {result.run_seconds:.1f} s)")
    return "\n".join(lines)
