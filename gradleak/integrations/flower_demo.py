"""``gradleak flower-demo``: a real Flower federation on loopback, attacked by its own server.

Starts a SuperLink and ``clients`` SuperNodes (:class:`~.flower_local.LocalFederation`), runs the
example app shipped with the package, ``gradleak/integrations/flower_app`` (FedAvg wrapped in an
:class:`~.flower.EavesdroppingStrategy`), and reports what leaked from every client in every
round. Everything is bounded by one ``timeout_s``; every process started is ended, on success,
error or timeout.

The task and the attack are one :class:`~gradleak.config.AttackConfig` (``FlowerDemoConfig.attack``),
handed to the app's run config under the options' own names (:data:`APP_OPTIONS`); the server app
builds the same AttackConfig back from it.

The demo runs the SuperLink and SuperNodes on 127.0.0.1 with TLS off (Flower's ``--insecure``),
loopback only; a real deployment must run Flower with TLS certificates (see Flower's "Enable TLS
connections", https://flower.ai/docs/framework/how-to-enable-tls-connections.html).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import AttackConfig, default
from ..errors import ConfigError, GradleakError
from .eavesdropper import LeakRecord, read_leaks
from .privacy import FlowerPrivacy
from .weights import local_steps_of_epochs

if TYPE_CHECKING:  # it imports flwr: imported when the demo runs, not when the CLI loads
    from .flower_local import LocalFederation

STARTUP_SHARE = 0.3  # at most this share of the budget for starting the federation
DRAIN_MARGIN_S = 10.0  # the server stops waiting for attacks this long before the demo's deadline
# The example Flower app, shipped as package data (its pyproject.toml and gradleak_flower_app/).
EXAMPLE_APP = Path(__file__).resolve().parent / "flower_app"


# The gradleak options the example app reads from its run config, under their names with dashes
# (flower_app/pyproject.toml declares each; Flower refuses run-config keys it does not declare).
APP_OPTIONS = ("dataset", "data_dir", "model", "width", "init", "batch_size", "local_lr", "local_steps",
               "local_batch_size", "seed", "attack", "iterations", "restarts", "tv", "step_size", "labels",
               "knows_local_schedule", "fedavg_matching")
# The demo's defaults, beneath a config file and flags: a short attack, and the app's clients train in train mode.
DEMO_DEFAULTS = {"iterations": 300, "client_mode": "train"}
# Options the demo may leave at any value: a Flower client always sends weights (local-steps 1 is FedSGD).
_IRRELEVANT = ("update",)


def demo_attack_config(**options: Any) -> AttackConfig:
    """The demo's AttackConfig: :data:`DEMO_DEFAULTS` under ``options`` (flat), validated."""
    return AttackConfig.from_dict({**DEMO_DEFAULTS, **options})


@dataclass
class FlowerDemoConfig:
    """Options of ``gradleak flower-demo``: the task and attack (one AttackConfig), and the demo's own."""

    attack: AttackConfig = field(default_factory=demo_attack_config)
    rounds: int = 3
    clients: int = 2
    # The clients train this many local epochs over their batch (K = epochs · ⌈B/b⌉ steps; the train
    # config says local-epochs, the eavesdropper reads K from it); None: local_steps steps.
    local_epochs: int | None = None
    attack_from_round: int = 1  # earlier rounds only train the global model
    out: Path = Path("runs/flower-demo")
    overwrite: bool = False  # replace an earlier demo's output folder instead of refusing
    timeout_s: float = 300.0
    attack_timeout_s: float | None = None  # per attack; None: the whole budget
    isolation: str = "process"
    save_captures: bool = False
    app: Path | None = None  # None: the app shipped with gradleak (EXAMPLE_APP)
    # Flower's own privacy features, as gradleak.integrations.privacy names them (app keys flower-dp/-secagg).
    flower_dp: str = "none"
    flower_secagg: str = "none"

    @property
    def privacy(self) -> FlowerPrivacy:
        return FlowerPrivacy.parse(self.flower_dp, self.flower_secagg)

    @property
    def local_steps(self) -> int:
        """K, the local SGD steps each client takes."""
        if self.local_epochs is None:
            return self.attack.client.local_steps
        return local_steps_of_epochs(self.local_epochs, self.attack.data.batch_size, self.attack.client.local_batch_size)

    def validate(self) -> None:
        from ..studies.checks import check_inputs

        if self.rounds < 1 or self.clients < 1:
            raise ConfigError("rounds and clients must be at least 1")
        if not 1 <= self.attack_from_round <= self.rounds:
            raise ConfigError(f"attack_from_round must be between 1 and rounds ({self.rounds})")
        c = self.attack.client
        if self.local_epochs is not None and (self.local_epochs < 1 or c.local_steps != 1):
            raise ConfigError("local_epochs must be at least 1, and replaces local_steps (leave it at 1)")
        b, mb = self.attack.data.batch_size, c.local_batch_size
        if mb is not None and mb < b and b % mb:
            # The client's epochs end on a short mini-batch; the attack's step plan (simulate_client's
            # arithmetic) runs on across the epoch boundary instead: the two agree only when b divides B.
            raise ConfigError(f"local_batch_size {mb} must divide batch_size {b} (or be at least it): the attack "
                              "simulates whole epochs of equal mini-batches")
        if not self.timeout_s > 0 or (self.attack_timeout_s is not None and not self.attack_timeout_s > 0):
            raise ConfigError("timeouts must be positive")
        if self.privacy.aggregate_only and self.clients < 2:
            raise ConfigError("--flower-secagg needs at least 2 clients (SecAgg+ aggregates several)")
        if self.isolation not in ("process", "thread"):
            raise ConfigError(f"unknown isolation {self.isolation!r}; choose process or thread")
        a = check_inputs(self.attack)
        if a.client.client_mode != "train":
            raise ConfigError("the example app's clients train in train mode; client_mode must be train")
        unused = [k for k, v in a.to_dict().items()
                  if k not in APP_OPTIONS and k not in DEMO_DEFAULTS and k not in _IRRELEVANT and v != default(k)]
        if unused:
            raise ConfigError(f"flower-demo cannot apply option(s) {', '.join(unused)}: the example app reads only "
                              f"{', '.join(APP_OPTIONS)}")

    def to_dict(self) -> dict[str, Any]:
        """What ran, as ``config.json`` records it."""
        return {"attack": self.attack.to_dict(), "rounds": self.rounds, "clients": self.clients, "out": str(self.out),
                "local_epochs": self.local_epochs, "local_steps_per_round": self.local_steps,
                "attack_from_round": self.attack_from_round, "timeout_s": self.timeout_s, "attack_timeout_s": self.attack_timeout_s, "isolation": self.isolation,
                "save_captures": self.save_captures, "app": str(self.app) if self.app is not None else None,
                "flower_dp": self.flower_dp, "flower_secagg": self.flower_secagg}


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
    """The app's run config: the :data:`APP_OPTIONS` of ``cfg.attack`` (None as ``""``) and the demo's keys."""
    out = cfg.out.resolve()
    flat = cfg.attack.to_dict()
    if flat["data_dir"]:
        flat["data_dir"] = str(Path(flat["data_dir"]).expanduser().resolve())  # the nodes run elsewhere
    options = {k.replace("_", "-"): "" if flat[k] is None else flat[k] for k in APP_OPTIONS}
    return {
        **options, "num-server-rounds": cfg.rounds, "min-nodes": cfg.clients,
        "local-epochs": cfg.local_epochs or 0, "attack-from-round": cfg.attack_from_round,
        "attack-timeout": float(cfg.attack_timeout_s or cfg.timeout_s),
        "attack-isolation": cfg.isolation, "max-pending": cfg.rounds * cfg.clients,
        "drain-timeout": float(cfg.timeout_s), "drain-deadline": float(deadline_unix),
        "out-dir": str(out), "store": str(out / "results.sqlite"), "truth-dir": str(out / "truth"),
        "save-captures": cfg.save_captures, "flower-dp": cfg.flower_dp, "flower-secagg": cfg.flower_secagg,
    }


def run_flower_demo(cfg: FlowerDemoConfig) -> FlowerDemoResult:
    """Run the demo; never leaves a process behind. A timeout is reported in ``result.error``.

    A non-empty ``cfg.out`` is refused unless ``cfg.overwrite`` (an earlier demo's results would mix
    with this one's), before any process starts."""
    from ..io import write_json
    from ..studies.outputs import prepare_output
    from .flower import require_flwr
    from .flower_local import LocalFederation

    require_flwr()
    cfg.validate()
    app = find_example_app(cfg.app)
    out = prepare_output(cfg.out, cfg.overwrite)
    write_json(out / "config.json", cfg.to_dict())  # also marks the folder as gradleak's for --overwrite

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
    a = cfg.attack
    batch, steps, mb = a.data.batch_size, cfg.local_steps, a.client.local_batch_size
    if steps == 1 and (mb is None or mb >= batch):
        kind = "FedSGD"
    else:
        epochs = f"{cfg.local_epochs} epochs, " if cfg.local_epochs else ""
        kind = (f"FedAvg ({epochs}{steps} local steps on mini-batches of {mb if mb and mb < batch else batch}; "
                f"attack matches {a.inversion.fedavg_matching})")
    attacked = cfg.rounds - cfg.attack_from_round + 1
    iterations = a.inversion.iterations or "the preset's"
    privacy = cfg.privacy
    said = {r.observed for r in result.records if r.observed}  # what the eavesdropper itself recorded
    seen = said.pop() if len(said) == 1 else privacy.observed(cfg.clients)
    if privacy.aggregate_only:  # one capture per round, of all N·B images
        batch, unit, expected = cfg.clients * batch, "aggregates", attacked
    else:
        unit, expected = "client updates", attacked * cfg.clients
    lines = [
        f"Flower federation on 127.0.0.1: {cfg.clients} clients × {cfg.rounds} rounds, {a.data.dataset}/"
        f"{a.victim.model}, B={a.data.batch_size}, {kind} lr={a.client.local_lr}; server attack "
        f"{a.inversion.attack} × {iterations} it"
        + (f" from round {cfg.attack_from_round} (earlier rounds only train the model)" if attacked < cfg.rounds else ""),
        f"Flower privacy: {privacy.describe()}; the server observes: {seen}",
        f"{'round':>5}  {'client':>6}  {'status':<8} {'recovered':<{2 * batch + 3}} "
        f"{'true':<{2 * batch + 3}} {'labels':>6}  {'SSIM':>6}  {'PSNR':>6}  grid",
    ]
    order = sorted(result.records, key=lambda r: (r.server_round, result.clients.get(r.node_id, r.node_id)))
    for r in order:
        client = result.clients.get(r.node_id)
        who = ("all" if privacy.aggregate_only else str(client) if client is not None else f"n{r.node_id}")
        acc = f"{r.label_accuracy:.2f}" if r.label_accuracy is not None else "-"
        ssim = f"{r.ssim:.3f}" if r.ssim is not None else "-"
        psnr = f"{r.psnr:.2f}" if r.psnr is not None else "-"
        tail = r.grid or (r.error or "")
        lines.append(f"{r.server_round:>5}  {who:>6}  {r.status:<8} {_labels(r.recovered_labels):<{2 * batch + 3}} "
                     f"{_labels(r.true_labels):<{2 * batch + 3}} {acc:>6}  {ssim:>6}  {psnr:>6}  {tail}")
    done = [r for r in result.records if r.status == "done" and r.label_accuracy is not None]
    if done:
        mean_acc = sum(r.label_accuracy for r in done) / len(done)
        mean_ssim = sum(r.ssim for r in done) / len(done)
        lines.append(f"leaked: mean label accuracy {mean_acc:.2f}, mean SSIM {mean_ssim:.3f} over {len(done)} of "
                     f"{expected} {unit}" + (f" (each scored against all {batch} images of the {cfg.clients} clients)"
                                             if privacy.aggregate_only else ""))
        base = {k: [r.summary[k] for r in done if r.summary.get(k) is not None]
                for k in ("label_random_baseline", "ssim_random_baseline", "psnr_random_baseline", "psnr")}
        if all(base.values()):
            mean = {k: sum(v) / len(v) for k, v in base.items()}
            lines.append(f"random baselines (what learning nothing scores): labels {mean['label_random_baseline']:.2f}, "
                         f"SSIM {mean['ssim_random_baseline']:.3f}, PSNR {mean['psnr_random_baseline']:.2f} dB "
                         f"(attack: PSNR {mean['psnr']:.2f} dB)")
    else:
        lines.append(f"no attack finished ({len(result.records)} of {expected} updates recorded)")
    lines.append(f"results store {result.store}; logs {result.logs}"
                 + (f"; captures {cfg.out / 'captures'}" if cfg.save_captures else ""))
    lines.append(f"wall time {result.seconds:.1f} s (federation start {result.startup_seconds:.1f} s, "
                 f"flwr run {result.run_seconds:.1f} s)")
    return "\n".join(lines)
