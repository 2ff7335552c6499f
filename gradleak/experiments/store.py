"""The results store: one SQLite file per sweep folder (``DIR/results.sqlite``).

Tables:

* ``runs``: one row per job id — status (``done`` | ``failed``), the full config and the full
  summary as JSON (unknown summary keys are kept, so later metrics need no schema change), plus
  promoted columns for the fields people filter and plot by;
* ``images``: one row per reconstructed image of a done run — its matched original, SSIM, PSNR,
  true and recovered label, and any other ``per_image_*`` numbers as JSON.

A run's rows are written in one transaction (``INSERT OR REPLACE`` the run, ``DELETE`` + ``INSERT``
its images), in WAL mode, by one process only (the sweep's parent): a ``kill -9`` at any moment
leaves either the old rows or the new ones, never a partial run and never a duplicate.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError

STORE_FILE = "results.sqlite"
SCHEMA_VERSION = 1

# Config fields and summary metrics copied into their own columns (everything stays in the JSON too).
CONFIG_COLUMNS = {
    "dataset": "TEXT", "model": "TEXT", "batch_size": "INTEGER", "attack": "TEXT", "labels": "TEXT",
    "update": "TEXT", "trained_steps": "INTEGER", "seed": "INTEGER",
}
METRIC_COLUMNS = {
    "ssim": "REAL", "psnr": "REAL", "label_accuracy": "REAL", "label_random_baseline": "REAL",
    "label_method": "TEXT", "seconds": "REAL",
}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    experiment TEXT,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    config TEXT NOT NULL,
    metrics TEXT,
    {", ".join(f'"{k}" {t}' for k, t in {**CONFIG_COLUMNS, **METRIC_COLUMNS}.items())},
    error TEXT,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    original_idx INTEGER,
    ssim REAL,
    psnr REAL,
    true_label INTEGER,
    recovered_label INTEGER,
    extra TEXT,
    PRIMARY KEY (run_id, idx)
);
"""


@dataclass
class RunRecord:
    """One row of ``runs``, decoded."""

    id: str
    experiment: str | None
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    finished_at: float


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null rather than as invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any) -> str:
    return json.dumps(_finite(value), sort_keys=True, allow_nan=False, default=str)


def image_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-reconstruction rows: reconstruction i was matched to original ``assignment[i]``."""
    ssim = summary.get("per_image_ssim") or []
    n = len(ssim)
    assignment = summary.get("assignment") or list(range(n))
    true = summary.get("true_labels") or []
    recovered = summary.get("recovered_labels") or []
    # Other per-image lists (from later metrics) ride along in `extra`, keyed by their suffix.
    extra_keys = [k for k, v in summary.items()
                  if k.startswith("per_image_") and k not in ("per_image_ssim", "per_image_psnr")
                  and isinstance(v, list) and len(v) == n]
    rows = []
    for i in range(n):
        original = assignment[i] if i < len(assignment) else None
        rows.append({
            "idx": i,
            "original_idx": original,
            "ssim": _finite(ssim[i]),
            "psnr": _finite((summary.get("per_image_psnr") or [None] * n)[i]),
            "true_label": true[original] if original is not None and original < len(true) else None,
            "recovered_label": recovered[i] if i < len(recovered) else None,
            "extra": to_json({k[len("per_image_"):]: summary[k][i] for k in extra_keys}) if extra_keys else None,
        })
    return rows


class ResultStore:
    """Read and write one sweep's results; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, create: bool = True):
        path = Path(path)
        if path.is_dir() or path.suffix != ".sqlite":
            path = path / STORE_FILE
        if not create and not path.is_file():
            raise DataError(f"no results store at {path} (run `gradleak sweep` with --out {path.parent} first)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly one run.
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{path} is not a gradleak results store: {exc}") from None
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
        self._conn.execute("PRAGMA foreign_keys=ON")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise DataError(f"{path} has store schema {version}; this gradleak reads schema {SCHEMA_VERSION}")
        if version == 0:
            self._conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # -- writing ---------------------------------------------------------------------------------

    def record(self, run_id: str, config: dict[str, Any], summary: dict[str, Any] | None = None,
               error: str | None = None, experiment: str | None = None, finished_at: float | None = None) -> None:
        """Write one finished run (``summary``) or one failed run (``error``) atomically."""
        if (summary is None) == (error is None):
            raise ValueError("record needs exactly one of summary or error")
        metrics = {k: v for k, v in (summary or {}).items() if k != "config"}
        row = {
            "id": run_id,
            "experiment": experiment,
            "status": "done" if summary is not None else "failed",
            "config": to_json(config),
            "metrics": to_json(metrics) if summary is not None else None,
            **{k: _finite(config.get(k)) for k in CONFIG_COLUMNS},
            **{k: _finite(metrics.get(k)) for k in METRIC_COLUMNS},
            "error": error,
            "finished_at": time.time() if finished_at is None else finished_at,
        }
        images = image_rows(metrics) if summary is not None else []
        cols = ", ".join(f'"{k}"' for k in row)
        marks = ", ".join(f":{k}" for k in row)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", row)
            conn.execute("DELETE FROM images WHERE run_id = ?", (run_id,))
            conn.executemany(
                "INSERT INTO images (run_id, idx, original_idx, ssim, psnr, true_label, recovered_label, extra) "
                "VALUES (:run_id, :idx, :original_idx, :ssim, :psnr, :true_label, :recovered_label, :extra)",
                [{"run_id": run_id, **r} for r in images],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- reading ---------------------------------------------------------------------------------

    def statuses(self) -> dict[str, str]:
        """Job id → ``done`` | ``failed`` for every recorded run."""
        return dict(self._conn.execute("SELECT id, status FROM runs"))

    def runs(self, status: str | None = None) -> list[RunRecord]:
        query = "SELECT id, experiment, status, config, metrics, error, finished_at FROM runs"
        args: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        out = []
        for rid, exp, st, cfg, metrics, err, fin in self._conn.execute(query + " ORDER BY finished_at, id", args):
            out.append(RunRecord(rid, exp, st, json.loads(cfg), json.loads(metrics) if metrics else {}, err, fin))
        return out

    def images(self, run_id: str | None = None) -> list[dict[str, Any]]:
        query = ("SELECT run_id, idx, original_idx, ssim, psnr, true_label, recovered_label, extra FROM images")
        args: Iterable = ()
        if run_id is not None:
            query += " WHERE run_id = ?"
            args = (run_id,)
        keys = ("run_id", "idx", "original_idx", "ssim", "psnr", "true_label", "recovered_label", "extra")
        out = []
        for values in self._conn.execute(query + " ORDER BY run_id, idx", tuple(args)):
            row = dict(zip(keys, values))
            row["extra"] = json.loads(row["extra"]) if row["extra"] else {}
            out.append(row)
        return out

    def execute(self, sql: str, args: Iterable = ()) -> list[tuple]:
        """Run a read query (for ad-hoc analysis and tests)."""
        return list(self._conn.execute(sql, tuple(args)))
