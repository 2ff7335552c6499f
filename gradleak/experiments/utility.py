"""A sweep's utility runs: FedAvg accuracy under each distinct defence setting, computed once.

An experiment file with ``utility: {rounds: R, clients: K[, seeds: [..]]}`` asks the sweep for the
utility (:func:`gradleak.studies.utility.fedavg_utility`) of every distinct setting among its runs —
data, model, client schedule, batch size, defences and seed (:data:`~gradleak.studies.utility.
UTILITY_OPTIONS`); runs that differ only on the attacker's side (iterations, labeller, threat)
share one. Each is cached as ``DIR/utility/<id>.json`` (the id hashes the setting and the budget),
so a resumed or extended sweep computes only the new ones. They run on the sweep's backend after
its attack runs, and only the parent writes, as for runs.
"""

from __future__ import annotations

import json
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ..config import AttackConfig
from ..io import write_json
from ..studies.utility import UtilityBudget, utility_id
from .spec import Experiment, Job

UTILITY_DIR = "utility"


def utility_job(job_id: str, config: dict[str, Any], threads: int | None = None, *, rounds: int,
                clients: int) -> Any:
    """Compute one setting's utility (in whatever process this is): a JobOutcome with its summary."""
    from ..studies.utility import fedavg_utility
    from .runner import JobOutcome, one_line

    started = time.perf_counter()
    try:
        cfg = AttackConfig.from_dict(config)
        if threads and cfg.run.threads is None:
            cfg = cfg.with_options(threads=threads)
        summary = fedavg_utility(cfg, rounds, clients).to_dict()
    except Exception as exc:
        return JobOutcome(job_id, error=one_line(exc), artefacts={"error.txt": traceback.format_exc().encode()},
                          seconds=time.perf_counter() - started)
    summary["setting"]["threads"] = None  # the thread budget does not change the result
    return JobOutcome(job_id, summary=summary, seconds=time.perf_counter() - started)


def utility_jobs(experiment: Experiment, budget: UtilityBudget) -> list[Job]:
    """One job per distinct utility setting of the experiment's runs (for the budget's seeds, or
    each run's own), in the order the runs list them."""
    jobs: dict[str, Job] = {}
    for job in experiment.jobs:
        seeds = budget.seeds if budget.seeds is not None else (job.config.run.seed,)
        for seed in seeds:
            cfg = job.config.with_options(seed=seed) if seed != job.config.run.seed else job.config
            uid = utility_id(cfg, budget.rounds, budget.clients)
            jobs.setdefault(uid, Job(uid, cfg))
    return list(jobs.values())


def load_utilities(out: str | Path) -> dict[str, dict[str, Any]]:
    """Every cached utility of sweep folder ``out``: id → summary (failed ones are left out)."""
    folder = Path(out) / UTILITY_DIR
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "accuracy" in data:
            found[path.stem] = data
    return found


def run_utility(experiment: Experiment, out: Path, backend: Callable, workers: int, threads: int | None,
                address: str | None, progress: bool = True,
                echo: Callable[[str], None] | None = None) -> tuple[int, int]:
    """Compute the utilities of ``experiment`` not yet cached in ``out``; (done now, failed now)."""
    budget = UtilityBudget.parse(experiment.utility)
    jobs = utility_jobs(experiment, budget)
    cached = load_utilities(out)
    todo = [j for j in jobs if j.id not in cached]
    if echo is not None:
        echo(f"utility: {len(jobs)} settings ({budget.rounds} rounds × {budget.clients} clients): "
             f"{len(jobs) - len(todo)} cached, {len(todo)} to compute")
    if not todo:
        return 0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="utility", unit="setting", dynamic_ncols=True)
    done = failed = 0
    job_fn = partial(utility_job, rounds=budget.rounds, clients=budget.clients)
    try:
        for outcome in backend(todo, job_fn, workers, threads, address):
            if outcome.summary is not None:
                (out / UTILITY_DIR).mkdir(parents=True, exist_ok=True)
                write_json(out / UTILITY_DIR / f"{outcome.job_id}.json", outcome.summary)
                done += 1
            else:
                failed += 1
                message = f"utility {outcome.job_id} failed: {outcome.error}"
                if bar is not None:
                    bar.write(message)
                elif echo is not None:
                    echo(message)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return done, failed


__all__ = ["UTILITY_DIR", "load_utilities", "run_utility", "utility_job", "utility_jobs"]
