"""A real Flower deployment on loopback: one SuperLink and N SuperNodes, no Ray, bounded and clean.

:class:`LocalFederation` starts ``flower-superlink`` and ``flower-supernode`` processes on free
127.0.0.1 ports with their own ``FLWR_HOME``, runs Flower apps on them with ``flwr run``, and on
exit ends every process it started, including the ones Flower spawns itself (SuperExec,
ServerApp, ClientApps, attack workers): each carries a session marker in its environment, and
:meth:`LocalFederation.close` hunts them down by it (Linux ``/proc``; elsewhere it ends the
process groups it started).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import GradleakError
from ..io import atomic_write
from .flower import require_flwr

SESSION_ENV = "GRADLEAK_FLOWER_SESSION"
CONNECTION = "gradleak-local"
LOOPBACK = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _executable(name: str) -> str:
    """A Flower console script from this interpreter's environment (the one gradleak runs in)."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise GradleakError(f"{name} not found next to {sys.executable} or on PATH; pip install 'gradleak[flower]'")
    return found


def marked_processes(session: str) -> list[int]:
    """PIDs of live processes whose environment carries ``SESSION_ENV=session`` (Linux only)."""
    needle = f"{SESSION_ENV}={session}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class RunOutcome:
    """How a run ended: ``flwr run``'s exit status, the run's final status on the SuperLink
    (``finished:completed``, ``finished:failed``, …; ``flwr run`` exits 0 even when the
    ServerApp raised), the wall time, and the log it streamed."""

    returncode: int
    status: str | None
    seconds: float
    log: Path
    run_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.status == "finished:completed"


@dataclass
class LocalFederation:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1; use it as a context manager.

    Node ``i`` gets ``node_config`` ``partition-id=i num-partitions=num_nodes``. ``home`` is
    FLWR_HOME (a temporary folder, removed on close, when None); ``log_dir`` keeps each
    process's output (inside ``home`` when None).
    """

    num_nodes: int = 2
    home: Path | None = None
    log_dir: Path | None = None
    start_timeout_s: float = 90.0
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    superlink_port: int | None = None
    node_ids: dict[int, int] = field(default_factory=dict)  # Flower node id → partition id

    def __post_init__(self) -> None:
        require_flwr()
        if self.num_nodes < 1:
            raise GradleakError("a federation needs at least one SuperNode")
        self._own_home = self.home is None
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._logs: list[Any] = []
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "LocalFederation":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        env.update({
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            SESSION_ENV: self.session,
            # Flower starts flower-superexec, flwr-serverapp and flwr-clientapp by name.
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.home is None:
            self.home = Path(tempfile.mkdtemp(prefix="gradleak-flwr-"))
        self.home = Path(self.home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir = Path(self.log_dir) if self.log_dir is not None else self.home / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            ports = free_ports(1 + self.num_nodes)
            self.superlink_port = ports[0]
            self._write_connection()
            deadline = time.monotonic() + self.start_timeout_s
            self._spawn("superlink", [
                _executable("flower-superlink"), "--insecure", "--host", LOOPBACK, "--port", str(ports[0]),
                "--disable-runtime-dependency-installation",
            ])
            self._wait_for_port(ports[0], deadline)
            for i in range(self.num_nodes):
                self._spawn(f"supernode-{i}", [
                    _executable("flower-supernode"), "--insecure", "--superlink", f"{LOOPBACK}:{ports[0]}",
                    "--host", LOOPBACK, "--port", str(ports[1 + i]),
                    "--node-config", f"partition-id={i} num-partitions={self.num_nodes}",
                ])
            self._wait_for_nodes(deadline)
        except BaseException:
            self.close()
            raise

    def run(self, app: str | Path, run_config: Mapping[str, Any] | None = None, timeout_s: float = 300.0) -> RunOutcome:
        """``flwr run app`` on this federation, streaming its log; bounded by ``timeout_s``.

        Raises GradleakError on timeout (the caller's ``close`` then ends every process).
        """
        import tomli_w  # ships with flwr

        app = Path(app).resolve()
        if not (app / "pyproject.toml").is_file():
            raise GradleakError(f"{app} is not a Flower app (no pyproject.toml)")
        cmd = [_executable("flwr"), "run", str(app), CONNECTION, "--stream"]
        if run_config:
            conf = self.home / f"run-config-{uuid.uuid4().hex[:8]}.toml"
            atomic_write(conf, tomli_w.dumps(dict(run_config)))
            cmd += ["--run-config", str(conf)]
        log = self.log_dir / "flwr-run.log"
        started = time.perf_counter()
        proc = self._spawn("flwr-run", cmd, log_name=log.name)
        deadline = time.monotonic() + timeout_s
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise GradleakError(f"the Flower run did not finish within {timeout_s:.0f} s; logs in {self.log_dir}") from None
        seconds = time.perf_counter() - started
        match = re.search(r"Successfully started run (\d+)", _tail(log, 10_000))
        run_id = int(match.group(1)) if match else None
        status = self.run_status(run_id, max(1.0, deadline - time.monotonic())) if run_id is not None else None
        return RunOutcome(code, status, seconds, log, run_id)

    def run_status(self, run_id: int, timeout_s: float = 60.0) -> str | None:
        """The run's status on the SuperLink (``flwr ls --format json``), or None if unknown."""
        import json

        try:
            done = subprocess.run([_executable("flwr"), "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"],
                                  capture_output=True, text=True, env=self.env(), cwd=str(self.home),
                                  timeout=timeout_s, stdin=subprocess.DEVNULL)
            text = done.stdout
            runs = json.loads(text[text.find("{"):]).get("runs", [])
        except (subprocess.TimeoutExpired, ValueError, OSError):
            return None
        return next((r.get("status") for r in runs if str(r.get("run-id")) == str(run_id)), None)

    def close(self, grace_s: float = 5.0) -> None:
        """End every process of this session: SIGTERM, then SIGKILL after ``grace_s``."""
        for _, p in reversed(self._procs):
            if p.poll() is None:
                _signal(-p.pid, signal.SIGTERM)  # each was started in its own process group
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (self._alive() or marked_processes(self.session)):
            for pid in marked_processes(self.session):
                _signal(pid, signal.SIGTERM)
            time.sleep(0.2)
        for _, p in self._procs:
            if p.poll() is None:
                _signal(-p.pid, signal.SIGKILL)
        for _ in range(50):  # killed processes take a moment to leave /proc
            left = marked_processes(self.session)
            if not left:
                break
            for pid in left:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.1)
        for _, p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for fh in self._logs:
            fh.close()
        self._logs.clear()
        if self._own_home and self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)

    def processes(self) -> list[int]:
        """Live PIDs of this session (started here or by Flower on our behalf)."""
        pids = set(marked_processes(self.session))
        pids.update(p.pid for _, p in self._procs if p.poll() is None)
        return sorted(pids)

    # -- helpers ---------------------------------------------------------------------------

    def _write_connection(self) -> None:
        atomic_write(
            self.home / "config.toml",
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{LOOPBACK}:{self.superlink_port}"\ninsecure = true\n'
        )

    def _spawn(self, name: str, cmd: list[str], log_name: str | None = None) -> subprocess.Popen:
        fh = open(self.log_dir / (log_name or f"{name}.log"), "wb")
        self._logs.append(fh)
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env(), cwd=str(self.home), start_new_session=True)
        self._procs.append((name, proc))
        return proc

    def _alive(self) -> bool:
        return any(p.poll() is None for _, p in self._procs)

    def _check_running(self) -> None:
        for name, p in self._procs:
            if p.poll() is not None and name != "flwr-run":
                log = self.log_dir / f"{name}.log"
                raise GradleakError(f"Flower {name} exited with status {p.returncode}: "
                                    f"{_tail(log, 3).replace(chr(10), ' | ')} (log: {log})")

    def _wait_for_port(self, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_running()
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise GradleakError(f"the SuperLink did not open {LOOPBACK}:{port} in time; logs in {self.log_dir}")

    def _wait_for_nodes(self, deadline: float) -> None:
        pattern = re.compile(r"SuperNode ID: (\d+)")
        while time.monotonic() < deadline:
            self._check_running()
            for i in range(self.num_nodes):
                match = pattern.search(_tail(self.log_dir / f"supernode-{i}.log", 200))
                if match:
                    self.node_ids[int(match.group(1))] = i
            if len(self.node_ids) == self.num_nodes:
                return
            time.sleep(0.3)
        raise GradleakError(f"only {len(self.node_ids)} of {self.num_nodes} SuperNodes connected in time; "
                            f"logs in {self.log_dir}")
