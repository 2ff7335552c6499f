"""``DIR/report.html`` and PNG plots from a sweep's store: one page a person reads.

The page shows label accuracy and SSIM against batch size with the random baseline, the semantic
and guidance comparisons when the runs recorded them ("no data" otherwise), the image grids of the
seed (reconstruction over original, B = 1, 2, 4), tables of mean ± spread over seeds, and the
seed's claims (Malcewicz et al. 2025), each a measured quantity with its effect, 95% bootstrap
interval, n, paired p-value and verdict.

Modules: :mod:`.runs` reads and groups the runs, :mod:`.plots` draws, :mod:`.claims` measures the
claims, :mod:`.verdicts` judges them, :mod:`.html` renders the page; statistics come from
:mod:`gradleak.metrics.intervals`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...io import atomic_write
from ...metrics.intervals import Stat, stat
from ..store import ResultStore
from .claims import (
    BATCHES_FIELD,
    CLAIMS,
    claim_aggregation_helps,
    claim_b4_labels_beat_random,
    claim_b4_naming_twice_random,
    claim_label_accuracy_drops,
    claim_more_batches_help,
    claim_oracle_guidance_helps,
    claim_search_beats_random,
    claim_ssim_drops,
    evaluate_claims,
)
from .defense_plots import defence_plots
from .defenses import DefenceStop, stop_table, stops_html, where_attacks_stop
from .html import render_html, summary_table
from .plots import PLOTS, Plot, save_plots
from .runs import Run, by_batch, group_series, load_runs, series_label, varying_fields
from .verdicts import HELD, INCONCLUSIVE, NOT_HELD, NOT_MEASURED, VERDICTS, Claim, decide

REPORT_FILE = "report.html"


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    html: Path
    plots: dict[str, Path | None]
    claims: list[Claim]
    runs: int
    failed: int
    missing: dict[str, str] = field(default_factory=dict)
    stops: list[DefenceStop] = field(default_factory=list)  # "where attacks stop", when runs had defences


def build_report(out: str | Path) -> Report:
    """Read ``out``'s store; write ``out/report.html`` and ``out/<plot>.png``."""
    out = Path(out)
    with ResultStore(out, create=False) as store:
        records = store.runs()
    runs = load_runs(out, records)
    failed = [r for r in records if r.status == "failed"]
    names = sorted({r.experiment for r in records if r.experiment})
    plots = [make(runs) for make in PLOTS]
    written = save_plots(out, plots)
    claims = evaluate_claims(runs)
    stops = where_attacks_stop(out, runs)
    stop_plots = defence_plots(stops)
    written.update(save_plots(out, stop_plots))
    overview = [
        ("experiment", ", ".join(names) or "—"),
        ("runs", f"{len(runs)} done, {len(failed)} failed"),
        ("batch sizes", ", ".join(str(b) for b in sorted({r.batch_size for r in runs})) or "—"),
        ("seeds", ", ".join(str(s) for s in sorted({r.config.get("seed") for r in runs})) or "—"),
        ("series (fields that vary)", ", ".join(varying_fields(runs)) or "—"),
        ("store", str(store.path)),
    ]
    title = f"gradleak report: {', '.join(names) or out.name}"
    page = render_html(title, overview, claims, plots, summary_table(runs), failed, extra=stops_html(stops, stop_plots))
    path = atomic_write(out / REPORT_FILE, page)
    return Report(path, written, claims, len(runs), len(failed),
                  {p.name: p.missing for p in [*plots, *stop_plots] if p.missing}, stops)


__all__ = [
    "BATCHES_FIELD", "CLAIMS", "HELD", "INCONCLUSIVE", "NOT_HELD", "NOT_MEASURED", "PLOTS", "REPORT_FILE", "VERDICTS",
    "Claim", "Plot", "Report", "Run", "Stat", "build_report", "by_batch", "claim_aggregation_helps",
    "claim_b4_labels_beat_random", "claim_b4_naming_twice_random", "claim_label_accuracy_drops",
    "claim_more_batches_help", "claim_oracle_guidance_helps", "claim_search_beats_random", "claim_ssim_drops",
    "decide", "evaluate_claims", "group_series", "load_runs", "render_html", "series_label", "stat",
    "stop_table", "summary_table", "varying_fields", "where_attacks_stop",
]
