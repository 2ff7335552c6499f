"""Run slow work (attacks) beside a live system without ever blocking or breaking it.

:class:`OffPathRunner` takes jobs from a bounded queue; a full queue skips the job instead of
waiting. Each worker runs its jobs in its own long-lived spawned process (killed and replaced
when a job overruns its timeout) or, for cheap work and tests, in a thread (which can only be
abandoned on timeout, not killed). Every job ends in exactly one :class:`JobRecord` handed to
``on_record``: ``done``, ``failed`` (with the error), ``timeout`` or ``skipped``.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import pickle
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from ..errors import ConfigError
from ..registry import Registry

JobStatus = Literal["done", "failed", "timeout", "skipped"]
STARTUP_TIMEOUT_S = 120.0  # a worker process must be ready (imports done) within this
_READY = b"ready"


@dataclass
class JobRecord:
    """How one job ended. ``result`` is the job's return value when ``status == "done"``."""

    key: Any
    status: JobStatus
    result: Any = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class _Job:
    key: Any
    fn: Callable[..., Any]
    args: tuple
    enqueued: float = field(default_factory=time.perf_counter)


_STOP = object()


def _error_text(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename.rsplit(os.sep, 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _child_loop(conn, parent_pid: int, torch_threads: int | None, preload: tuple[str, ...]) -> None:
    """Body of a worker process: run pickled ``(fn, args)`` jobs until the pipe closes.

    Jobs and results travel as plain pickles: multiprocessing's own pickler would pass torch
    tensors as shared-memory handles that die with the process that made them.
    """

    def watch_parent() -> None:  # an orphaned attack must not outlive the server that asked for it
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch_parent, daemon=True).start()
    for module in preload:  # imports are start-up, not job time
        importlib.import_module(module)
    if torch_threads:
        import torch  # small models run several times faster on one thread than on busy cores

        torch.set_num_threads(torch_threads)
    conn.send_bytes(_READY)  # job timeouts count from here, not from the interpreter's start-up
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            fn, args = pickle.loads(payload)
            reply = pickle.dumps(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as text
            reply = pickle.dumps(("err", _error_text(exc)))
        conn.send_bytes(reply)


class _ProcessSlot:
    """One long-lived worker process; replaced after a timeout or a crash."""

    def __init__(self, torch_threads: int | None, preload: tuple[str, ...] = ()) -> None:
        self.torch_threads = torch_threads
        self.preload = tuple(preload)
        self.proc = None
        self.conn = None

    def _ensure(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            return
        self.close()
        ctx = multiprocessing.get_context("spawn")  # fork would copy the server's threads and sockets
        self.conn, child_conn = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_child_loop, args=(child_conn, os.getpid(), self.torch_threads, self.preload),
                           daemon=True, name="gradleak-attack")
        try:
            proc.start()
        finally:
            child_conn.close()
        self.proc = proc
        ready = self.conn.poll(STARTUP_TIMEOUT_S) and self._recv_ready()
        if not ready:
            self.close()
            raise RuntimeError(f"attack worker process did not start within {STARTUP_TIMEOUT_S:g} s")

    def _recv_ready(self) -> bool:
        try:
            return self.conn.recv_bytes() == _READY
        except (EOFError, OSError):
            return False

    def run(self, job: _Job, timeout_s: float) -> tuple[JobStatus, Any, str | None]:
        payload = pickle.dumps((job.fn, job.args))
        self._ensure()
        self.conn.send_bytes(payload)
        if not self.conn.poll(timeout_s):
            self.close(kill=True)
            return "timeout", None, f"no result within {timeout_s:g} s; attack process killed"
        try:
            kind, value = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            code = self.proc.exitcode if self.proc is not None else None
            self.close()
            return "failed", None, f"attack process died (exit code {code})"
        return ("done", value, None) if kind == "ok" else ("failed", None, value)

    def close(self, kill: bool = False) -> None:
        if self.conn is not None:
            self.conn.close()  # an idle child sees EOF and returns
            self.conn = None
        if self.proc is not None:
            if kill:
                self.proc.kill()
            self.proc.join(2)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
            self.proc = None


class _ThreadSlot:
    """Runs each job in a daemon thread; on timeout the thread is abandoned (it cannot be killed)."""

    def __init__(self, torch_threads: int | None, preload: tuple[str, ...] = ()) -> None:
        del torch_threads, preload  # torch threads are process-wide: not ours to change in a live server

    def run(self, job: _Job, timeout_s: float) -> tuple[JobStatus, Any, str | None]:
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                box["value"] = job.fn(*job.args)
            except BaseException as exc:  # noqa: BLE001
                box["error"] = _error_text(exc)

        t = threading.Thread(target=body, daemon=True, name=f"gradleak-job-{job.key}")
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            return "timeout", None, f"no result within {timeout_s:g} s; job abandoned"
        if "error" in box:
            return "failed", None, box["error"]
        return "done", box.get("value"), None

    def close(self) -> None:
        pass


ISOLATIONS: Registry[Callable[..., Any]] = Registry("isolation")
ISOLATIONS.add("process", _ProcessSlot)
ISOLATIONS.add("thread", _ThreadSlot)


class OffPathRunner:
    """A bounded pool of ``workers`` job runners fed by a queue of at most ``max_pending`` jobs.

    :meth:`submit` never blocks: a full queue (or a closed runner) records the job as
    ``skipped``. ``timeout_s`` bounds each job's run time from its start.
    ``torch_threads`` sets torch's thread count inside worker processes, and ``preload`` names
    modules they import before taking jobs (so that imports do not count against a job's timeout).
    """

    def __init__(
        self,
        on_record: Callable[[JobRecord], None],
        workers: int = 1,
        max_pending: int = 4,
        timeout_s: float = 300.0,
        isolation: str = "process",
        torch_threads: int | None = 1,
        preload: tuple[str, ...] = (),
    ) -> None:
        if workers < 1 or max_pending < 1 or not timeout_s > 0:
            raise ConfigError("off-path runner needs workers ≥ 1, max_pending ≥ 1 and timeout_s > 0")
        slot_factory = ISOLATIONS.get(isolation)
        self._on_record = on_record
        self.timeout_s = float(timeout_s)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._closed = False
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, args=(slot_factory(torch_threads, preload),), daemon=True,
                             name=f"gradleak-offpath-{i}")
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> bool:
        """Queue ``fn(*args)``; return False (and record ``skipped``) when it cannot be queued."""
        with self._lock:
            if not self._closed:
                try:
                    self._queue.put_nowait(_Job(key, fn, args))
                    return True
                except queue.Full:
                    reason = f"queue full ({self._queue.maxsize} pending); attack skipped"
            else:
                reason = "runner closed; attack skipped"
        self._emit(JobRecord(key, "skipped", error=reason))
        return False

    def close(self, timeout_s: float | None = None) -> bool:
        """Stop taking jobs and let queued ones finish within ``timeout_s`` (None: wait for all).

        Jobs still queued at the deadline are recorded ``skipped``; a running one ends by its own
        timeout. Returns True when every worker finished in time.
        """
        with self._lock:
            if self._closed:
                return not any(t.is_alive() for t in self._threads)
            self._closed = True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for _ in self._threads:
            self._put_stop(deadline)
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            self._drain("shutdown deadline reached before the attack started; skipped")
            return False
        return True

    def _put_stop(self, deadline: float | None) -> None:
        while True:
            try:
                self._queue.put(_STOP, timeout=0.2)
                return
            except queue.Full:
                if deadline is not None and time.monotonic() > deadline:
                    self._drain("shutdown deadline reached before the attack started; skipped")

    def _drain(self, reason: str) -> None:
        stops = 0
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                stops += 1
            else:
                self._emit(JobRecord(job.key, "skipped", error=reason))
        for _ in range(stops):  # the workers still need their stop signal
            self._queue.put_nowait(_STOP)

    def _loop(self, slot) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is _STOP:
                    return
                started = time.perf_counter()
                try:
                    status, value, error = slot.run(job, self.timeout_s)
                except BaseException as exc:  # noqa: BLE001 - a runner bug must not kill the loop
                    status, value, error = "failed", None, _error_text(exc)
                self._emit(JobRecord(job.key, status, value, error, time.perf_counter() - started))
        finally:
            slot.close()

    def _emit(self, record: JobRecord) -> None:
        try:
            self._on_record(record)
        except Exception:  # noqa: BLE001 - a sink failure is logged, never raised into the caller
            traceback.print_exc()
