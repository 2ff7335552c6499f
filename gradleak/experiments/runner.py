"""Run a sweep's jobs on a backend and record each one in the store as it finishes.

A job is :func:`run_job`: it runs :func:`gradleak.studies.attack.run_attack` in a scratch folder and
returns the summary plus the artefact files as bytes. Only the parent process writes — artefacts
to ``DIR/runs/<id>/`` first, then the run's rows in one store transaction — so a worker on another
machine (Ray) needs no shared disk, and a row marked ``done`` always has its artefacts.

Backends (:data:`BACKENDS`) turn a list of jobs into an iterator of :class:`JobOutcome` in completion
order: ``local`` (in this process for one worker, else a spawn-context process pool) and ``ray``
(``ray.init(address=...)``, a local instance by default; needs the ``ray`` extra).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

from ..errors import ConfigError, GradleakError
from ..io import atomic_write
from ..registry import Registry
from .spec import Experiment, Job
from .store import ResultStore

RUNS_DIR = "runs"


@dataclass
class JobOutcome:
    """What a worker hands back: a summary (done) or a one-line error (failed), plus artefact files."""

    job_id: str
    summary: dict[str, Any] | None = None
    error: str | None = None
    artefacts: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0


JobFunction = Callable[[str, dict, "int | None"], JobOutcome]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_job(job_id: str, config: dict[str, Any], threads: int | None = None) -> JobOutcome:
    """Run one attack (in whatever process this is) and return its summary and artefacts."""
    from ..config import AttackConfig
    from ..studies.attack import run_attack

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gradleak-job-") as tmp:
        try:
            cfg = AttackConfig.from_dict(config)
            if threads and cfg.run.threads is None:  # the worker's share of the cores, unless the run sets its own
                cfg = cfg.with_options(threads=threads)
            result = run_attack(cfg, out_dir=tmp, progress=False)
        except Exception as exc:  # a failing run is data for the store, not the end of the sweep
            return JobOutcome(job_id, error=one_line(exc), artefacts={"error.txt": traceback.format_exc().encode()},
                              seconds=time.perf_counter() - started)
        artefacts = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    return JobOutcome(job_id, summary=result.summary, artefacts=artefacts, seconds=time.perf_counter() - started)


def _call(job_fn: JobFunction, job: Job, threads: int | None) -> JobOutcome:
    try:
        return job_fn(job.id, job.config.to_dict(), threads)
    except Exception as exc:  # a job function that raises instead of returning an error outcome
        return JobOutcome(job.id, error=one_line(exc))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _exit_when_orphaned(parent: int, interval: float = 1.0) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


def _watch_parent() -> None:
    """Pool-worker initializer: a sweep killed with SIGKILL cannot shut its pool down, and idle
    spawned workers would wait on their queue forever; make them exit when the parent is gone."""
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()


# A backend: (jobs, job function, workers, threads per job, cluster address) → outcomes as they finish.
Backend = Callable[[Sequence[Job], JobFunction, int, "int | None", "str | None"], Iterator[JobOutcome]]
BACKENDS: Registry[Backend] = Registry("sweep backend")


@BACKENDS.register("local")
def local_backend(jobs: Sequence[Job], job_fn: JobFunction, workers: int, threads: int | None,
                  address: str | None = None) -> Iterator[JobOutcome]:
    """One worker: run in this process (no start-up cost). More: a pool of spawned processes
    (spawn, not fork: forking a process that already holds torch's thread pools can deadlock)."""
    if workers <= 1:
        for job in jobs:
            yield _call(job_fn, job, threads)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_watch_parent)
    finished = False
    try:
        futures = {pool.submit(_call, job_fn, job, threads): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                yield future.result()
            except Exception as exc:  # the worker process died (OOM killer, segfault): record, go on
                yield JobOutcome(job.id, error=f"worker process failed: {one_line(exc)}")
        finished = True
    finally:
        if not finished:  # Ctrl-C or an error in the parent: do not wait hours for the runs in flight
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=finished, cancel_futures=True)


def import_ray():
    try:
        import ray
    except ImportError:
        raise GradleakError("--backend ray needs Ray: pip install 'gradleak[ray]' (or pip install 'ray>=2.9')") from None
    return ray


@BACKENDS.register("ray")
def ray_backend(jobs: Sequence[Job], job_fn: JobFunction, workers: int, threads: int | None,
                address: str | None = None) -> Iterator[JobOutcome]:
    """Jobs as Ray tasks (one CPU each). Without ``address`` a local Ray instance with ``workers``
    CPUs is started (temp dir from $RAY_TMPDIR) and stopped afterwards; with one, the cluster's
    nodes need gradleak installed and the data at the same paths."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            options["address"] = address
        else:
            # Ray's own servers (GCS, raylet, workers) listen on every interface and Ray refuses a
            # loopback node address (ray._private.services.resolve_ip_for_localhost); what guards a
            # local instance is Ray's token authentication, on by default since Ray 2.5x.
            options["num_cpus"] = max(1, workers)
            if os.environ.get("RAY_TMPDIR"):
                options["_temp_dir"] = os.environ["RAY_TMPDIR"]
        try:
            ray.init(**options)
        except Exception as exc:
            raise GradleakError(f"could not start or reach Ray{' at ' + address if address else ''}: {one_line(exc)}") from None
    remote = ray.remote(num_cpus=1, max_retries=0)(_call)
    pending: dict[Any, Job] = {}
    try:
        pending = {remote.remote(job_fn, job, threads): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # worker died or the task could not run
                    yield JobOutcome(job.id, error=f"ray task failed: {one_line(exc)}")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


@dataclass
class SweepSummary:
    """How a sweep went: counts over the experiment's jobs."""

    total: int
    skipped: int  # already done before this sweep
    retried: int  # failed before, run again
    done: int  # finished now
    failed: int  # failed now
    out: Path
    utility_done: int = 0  # utility settings computed now (experiments with a utility: budget)
    utility_failed: int = 0


def write_artefacts(run_dir: Path, artefacts: dict[str, bytes]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, data in artefacts.items():
        if Path(name).name != name:
            continue  # only plain file names: a worker never writes outside its run folder
        atomic_write(run_dir / name, data)


def plan(experiment: Experiment, statuses: dict[str, str]) -> tuple[list[Job], int, int]:
    """The jobs still to run (not done), how many are skipped, and how many are retries."""
    todo = [job for job in experiment.jobs if statuses.get(job.id) != "done"]
    retried = sum(statuses.get(job.id) == "failed" for job in todo)
    return todo, len(experiment.jobs) - len(todo), retried


def run_sweep(
    experiment: Experiment,
    out: str | Path,
    workers: int = 1,
    backend: str = "local",
    address: str | None = None,
    progress: bool = True,
    job_fn: JobFunction = run_job,
    echo: Callable[[str], None] | None = None,
) -> SweepSummary:
    """Run every job of ``experiment`` not yet done in ``out``'s store; record each as it finishes."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    run_backend = BACKENDS.get(backend)
    if address and backend != "ray":
        raise ConfigError("--address is for the ray backend")
    if backend == "ray":
        import_ray()  # fail before touching the output folder
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "experiment.yaml", yaml.safe_dump(
        {"name": experiment.name, "base": experiment.base, "grid": experiment.grid,
         **({"utility": experiment.utility} if experiment.utility is not None else {})}, sort_keys=False))
    # Each local worker gets its share of the cores; one worker keeps torch's default.
    threads = max(1, cpu_count() // workers) if workers > 1 else None
    if backend == "ray" and address:
        threads = 1  # remote nodes: one CPU per task, as requested from Ray
    with ResultStore(out) as store:
        todo, skipped, retried = plan(experiment, store.statuses())
        if echo is not None:
            echo(f"{experiment.name}: {len(experiment.jobs)} runs: {skipped} done already (skipped), "
                 f"{len(todo)} to run" + (f" ({retried} failed before, retrying)" if retried else "")
                 + f"; backend {backend}, {workers} worker(s) → {out}")
        by_id = {job.id: job for job in todo}
        done = failed = 0
        bar = _progress_bar(len(todo), experiment.name, progress)
        try:
            for outcome in run_backend(todo, job_fn, workers, threads, address):
                job = by_id[outcome.job_id]
                write_artefacts(out / RUNS_DIR / job.id, outcome.artefacts)
                if outcome.summary is not None:
                    store.record(job.id, job.config.to_dict(), summary=outcome.summary, experiment=experiment.name)
                    done += 1
                else:
                    error = outcome.error or "the job returned neither a summary nor an error"
                    store.record(job.id, job.config.to_dict(), error=error, experiment=experiment.name)
                    failed += 1
                    message = f"run {job.id} failed: {error}"
                    if bar is not None:
                        bar.write(message)
                    elif echo is not None:
                        echo(message)
                if bar is not None:
                    bar.set_postfix(failed=failed, refresh=False)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    utility = (0, 0)
    if experiment.utility is not None:  # once per defence setting, after the attacks (cached in DIR/utility/)
        from .utility import run_utility

        utility = run_utility(experiment, out, run_backend, workers, threads, address, progress, echo)
    return SweepSummary(len(experiment.jobs), skipped, retried, done, failed, out, *utility)


def _progress_bar(total: int, name: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="run", dynamic_ncols=True)
