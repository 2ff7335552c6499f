"""Sweeps over attack options: experiment files → jobs → a resumable SQLite store → plots and an HTML report.

``load_experiment`` parses a YAML grid into :class:`Job` s, ``run_sweep`` runs those not yet done on a
backend (``local`` processes or ``ray``) and records each in a :class:`ResultStore`, and
``build_report`` turns the store into ``report.html`` with the seed's claims checked.
"""

from .spec import Experiment, Job, build_experiment, expand_grid, job_id, load_experiment
from .store import STORE_FILE, ResultStore, RunRecord
from .runner import BACKENDS, JobOutcome, SweepSummary, run_job, run_sweep
from .report import Claim, Report, build_report, evaluate_claims

__all__ = [
    "BACKENDS", "Claim", "Experiment", "Job", "JobOutcome", "Report", "ResultStore", "RunRecord", "STORE_FILE",
    "SweepSummary", "build_experiment", "build_report", "evaluate_claims", "expand_grid", "job_id",
    "load_experiment", "run_job", "run_sweep",
]
