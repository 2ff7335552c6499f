"""``DIR/report.html`` and PNG plots from a sweep's store: one page a person reads.

The page is self-contained (PNGs embedded as base64, no external links) so it opens offline.
It shows label accuracy and SSIM against batch size with the random baseline, the semantic and
guidance comparisons when the runs recorded them ("no data" otherwise), the image grids of the
seed (reconstruction over original, B = 1, 2, 4), tables of mean ± spread over seeds, and the
seed's four claims (Malcewicz et al. 2025), each with the measured numbers and a verdict.

Runs are grouped into *series* by every config field that varies across the store except
``batch_size`` and ``seed``: a sweep over label methods plots one line per method, a sweep over
models one line per model.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .runner import RUNS_DIR  # noqa: E402
from .store import ResultStore, RunRecord  # noqa: E402

REPORT_FILE = "report.html"
HELD, NOT_HELD, NOT_MEASURED = "HELD", "DID NOT HOLD", "NOT MEASURED"

# Summary keys written by the semantic-labelling and guidance stages (when a run has them).
AGGREGATED_KEYS = ("semantic_accuracy_aggregated", "aggregated_semantic_accuracy")
# Marker and line per semantic curve, so curves that coincide (e.g. all at 1.0) stay distinguishable.
SEMANTIC_STYLES = {"originals": {"marker": "s", "linestyle": ":"}, "reconstructions": {"marker": "o"},
                   "aggregated": {"marker": "^", "linestyle": "--", "markersize": 9, "fillstyle": "none"}}
SEMANTIC_KEYS: tuple[tuple[str | tuple[str, ...], str], ...] = (
    ("original_semantic_accuracy", "originals"),
    ("semantic_accuracy", "reconstructions"),
    (AGGREGATED_KEYS, "aggregated"),  # over restarts (and rounds), when the run aggregated
)
SEMANTIC_BASELINE_KEY = "semantic_random_baseline"
GUIDANCE_FIELDS = ("guidance", "guidance_mode")  # config field naming the mode: none | oracle | search | ...
GUIDANCE_MODE_KEY = "guidance_mode"  # summary key: the mode the run used
NO_GUIDANCE_SSIM_KEY = "ssim_no_guidance"  # summary key: the same run's SSIM without guidance
SERIES_EXCLUDED = {"batch_size", "seed"}
TABLE_METRICS = ("label_accuracy", "label_random_baseline", "ssim", "psnr", "original_semantic_accuracy",
                 "semantic_accuracy", *AGGREGATED_KEYS, SEMANTIC_BASELINE_KEY, "search_accuracy",
                 NO_GUIDANCE_SSIM_KEY, "seconds")
EXAMPLE_BATCH_SIZES = (1, 2, 4)
MIN_EFFECT = 0.01  # differences of mean SSIM / accuracy below this count as "no change" in the claims


# -- reading runs ---------------------------------------------------------------------------------


@dataclass
class Run:
    """A done run as the report sees it: config, metrics and its artefact folder."""

    id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    folder: Path

    @property
    def batch_size(self) -> int:
        return int(self.config["batch_size"])

    def value(self, key: str | tuple[str, ...]) -> float | None:
        """A numeric metric (a dict-valued one gives its ``order_free``/``accuracy`` entry); given
        several names, the first one the run recorded."""
        if isinstance(key, tuple):
            return next((v for v in map(self.value, key) if v is not None), None)
        value = self.metrics.get(key)
        if isinstance(value, dict):
            value = value.get("order_free", value.get("accuracy"))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)


def load_runs(out: Path, records: Sequence[RunRecord]) -> list[Run]:
    return [Run(r.id, r.config, r.metrics, out / RUNS_DIR / r.id) for r in records if r.status == "done"]


def varying_fields(runs: Sequence[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.config} - SERIES_EXCLUDED)
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


def series_label(run: Run, fields_: Sequence[str]) -> str:
    return ", ".join(f"{k}={run.config.get(k)}" for k in fields_) or "all runs"


@dataclass
class Stat:
    mean: float
    std: float  # sample standard deviation over the runs (seeds) of a group; 0 for one run
    n: int

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"


def stat(values: Iterable[float | None]) -> Stat | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))


def by_batch(runs: Sequence[Run], metric: Callable[[Run], float | None]) -> dict[int, Stat]:
    out = {}
    for b in sorted({r.batch_size for r in runs}):
        s = stat(metric(r) for r in runs if r.batch_size == b)
        if s is not None:
            out[b] = s
    return out


def group_series(runs: Sequence[Run]) -> dict[str, list[Run]]:
    fields_ = varying_fields(runs)
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(series_label(r, fields_), []).append(r)
    return dict(sorted(groups.items()))


# -- plots ----------------------------------------------------------------------------------------


@dataclass
class Plot:
    """A PNG (or the reason there is none) with its caption."""

    name: str
    title: str
    caption: str
    png: bytes | None = None
    missing: str = ""


def _batch_axes(ax, batch_sizes: Sequence[int], ylabel: str) -> None:
    if batch_sizes and max(batch_sizes) > 2 * max(1, min(batch_sizes)):
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(batch_sizes)))
    ax.set_xticklabels([str(b) for b in sorted(set(batch_sizes))])
    ax.set_xlabel("batch size B")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _errorbar(ax, stats: dict[int, Stat], label: str, **style) -> None:
    xs = list(stats)
    ax.errorbar(xs, [stats[b].mean for b in xs], yerr=[stats[b].std for b in xs], capsize=3, label=label,
                **{"marker": "o", **style})


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _curves_plot(name: str, title: str, ylabel: str, curves: list[tuple[str, dict[int, Stat], dict]],
                 caption: str, missing: str, ylim: tuple[float, float] | None = (0.0, 1.05)) -> Plot:
    curves = [c for c in curves if c[1]]
    plot = Plot(name, title, caption)
    if not curves:
        plot.missing = missing
        return plot
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, stats, style in curves:
        _errorbar(ax, stats, label, **style)
    _batch_axes(ax, [b for _, s, _ in curves for b in s], ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.legend(fontsize=8)
    plot.png = _png(fig)
    return plot


def baseline_curve(runs: Sequence[Run], key: str = "label_random_baseline") -> tuple[str, dict[int, Stat], dict]:
    return ("random baseline", by_batch(runs, lambda r: r.value(key)), {"color": "grey", "linestyle": "--"})


def label_accuracy_plot(runs: Sequence[Run]) -> Plot:
    curves = [(label, by_batch(group, lambda r: r.value("label_accuracy")), {})
              for label, group in group_series(runs).items()]
    return _curves_plot("label_accuracy", "Label accuracy vs batch size", "label accuracy (order-free)",
                        curves + [baseline_curve(runs)],
                        "Mean ± standard deviation over seeds; dashed: expected accuracy of random guesses.",
                        "no data: no run recorded label accuracy")


def ssim_plot(runs: Sequence[Run]) -> Plot:
    curves = [(label, by_batch(group, lambda r: r.value("ssim")), {}) for label, group in group_series(runs).items()]
    return _curves_plot("ssim", "Reconstruction SSIM vs batch size", "SSIM (matched)", curves,
                        "Permutation-agnostic SSIM of the reconstructions, mean ± standard deviation over seeds.",
                        "no data: no run recorded SSIM")


def semantic_plot(runs: Sequence[Run]) -> Plot:
    curves = []
    for label, group in group_series(runs).items():
        for key, what in SEMANTIC_KEYS:
            suffix = f" ({label})" if label != "all runs" else ""
            curves.append((f"{what}{suffix}", by_batch(group, lambda r, k=key: r.value(k)), SEMANTIC_STYLES[what]))
    have = any(c[1] for c in curves)
    base_key = SEMANTIC_BASELINE_KEY if any(r.value(SEMANTIC_BASELINE_KEY) is not None for r in runs) \
        else "label_random_baseline"
    return _curves_plot("semantic", "Semantic label accuracy vs batch size", "semantic accuracy",
                        curves + ([baseline_curve(runs, base_key)] if have else []),
                        "Accuracy of the semantic labeller on the originals, on the reconstructions, and "
                        "aggregated over restarts/rounds.",
                        "no data: no run recorded semantic accuracy (originals / reconstructions / aggregated)")


def guidance_points(runs: Sequence[Run]) -> list[tuple[str, Run, float]]:
    """(guidance mode, run, SSIM) from runs that varied the guidance field or recorded both SSIMs."""
    points = []
    for r in runs:
        mode = r.metrics.get(GUIDANCE_MODE_KEY) or next(
            (r.config[f] for f in GUIDANCE_FIELDS if r.config.get(f) is not None), None)
        ssim = r.value("ssim")
        if mode is not None and ssim is not None:
            points.append((str(mode), r, ssim))
        no_guidance = r.value(NO_GUIDANCE_SSIM_KEY)
        if no_guidance is not None and str(mode) != "none":
            points.append(("none", r, no_guidance))
    return points


def guidance_plot(runs: Sequence[Run]) -> Plot:
    points = guidance_points(runs)
    modes = sorted({m for m, _, _ in points})
    curves = []
    if len(modes) > 1:
        for mode in modes:
            stats: dict[int, Stat] = {}
            for b in sorted({r.batch_size for _, r, _ in points}):
                s = stat(v for m, r, v in points if m == mode and r.batch_size == b)
                if s is not None:
                    stats[b] = s
            curves.append((f"guidance: {mode}", stats, {}))
    return _curves_plot("guidance", "Guidance: SSIM vs batch size", "SSIM (matched)", curves,
                        "SSIM with each guidance mode (none = no guidance term).",
                        "no data: no runs compared guidance modes (none vs oracle)")


def examples_plot(runs: Sequence[Run]) -> Plot:
    """The runs' own grid.png files (reconstruction over original), one per example batch size."""
    import matplotlib.image as mpimg

    plot = Plot("grid_examples", "Reconstructions over originals",
                "Top row of each panel: originals; bottom: the matched reconstructions with recovered label "
                "and per-image SSIM. One seed of the first series.")
    groups = group_series(runs)
    first = next(iter(groups.values()), [])
    sizes = [b for b in EXAMPLE_BATCH_SIZES if any(r.batch_size == b for r in first)]
    if not sizes:
        sizes = sorted({r.batch_size for r in first})[:3]
    chosen = []
    for b in sizes:
        candidates = sorted((r for r in first if r.batch_size == b and (r.folder / "grid.png").is_file()),
                            key=lambda r: (r.config.get("seed", 0), r.id))
        if candidates:
            chosen.append((b, candidates[0]))
    if not chosen:
        plot.missing = "no data: no run folder has a grid.png"
        return plot
    images = [mpimg.imread(r.folder / "grid.png") for _, r in chosen]
    heights = [img.shape[0] for img in images]
    width = max(img.shape[1] for img in images)
    fig, axes = plt.subplots(len(images), 1, figsize=(max(4.0, width / 100), sum(heights) / 100 + 0.4 * len(images)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (b, run), img in zip(axes[:, 0], chosen, images):
        ax.imshow(img)
        ax.set_title(f"B = {b} (seed {run.config.get('seed')}, SSIM {run.value('ssim') or 0:.2f})", fontsize=9)
        ax.axis("off")
    plot.png = _png(fig)
    return plot


PLOTS: tuple[Callable[[Sequence[Run]], Plot], ...] = (
    label_accuracy_plot, ssim_plot, semantic_plot, guidance_plot, examples_plot)


# -- the seed's claims ----------------------------------------------------------------------------


@dataclass
class Claim:
    """One claim of the seed, what was measured, and whether it held."""

    text: str
    verdict: str
    evidence: str


def _fmt_curve(stats: dict[int, Stat]) -> str:
    return ", ".join(f"B={b}: {s.mean:.3f}" for b, s in stats.items())


def _rises(stats: dict[int, Stat]) -> list[str]:
    """The steps B → B' (consecutive batch sizes) where the mean rises by more than MIN_EFFECT."""
    sizes = list(stats)
    return [f"B={a}→{b}" for a, b in zip(sizes, sizes[1:]) if stats[b].mean > stats[a].mean + MIN_EFFECT]


def claim_leakage_drops(runs: Sequence[Run]) -> Claim:
    text = "Leakage drops as the batch size grows."
    ssim = by_batch(runs, lambda r: r.value("ssim"))
    labels = by_batch(runs, lambda r: r.value("label_accuracy"))
    if len(ssim) < 2 or len(labels) < 2:
        return Claim(text, NOT_MEASURED, "needs done runs at two or more batch sizes")
    lo, hi = min(ssim), max(ssim)
    # A change smaller than MIN_EFFECT is noise (1.0000 vs 0.9999 is no drop).
    ssim_drops = ssim[hi].mean < ssim[lo].mean - MIN_EFFECT
    # Label accuracy can sit at 1.0 at every B (exact analytic recovery): not rising counts.
    labels_not_up = labels[max(labels)].mean <= labels[min(labels)].mean + MIN_EFFECT
    rises = _rises(ssim)
    evidence = (f"SSIM {_fmt_curve(ssim)} ({'drops' if ssim_drops else 'does not drop'} from B={lo} to B={hi} "
                f"by more than {MIN_EFFECT}" + (f"; not monotone: it rises {', '.join(rises)}" if rises else "")
                + f"); label accuracy {_fmt_curve(labels)} ({'does not rise' if labels_not_up else 'rises'}).")
    return Claim(text, HELD if ssim_drops and labels_not_up else NOT_HELD, evidence)


def claim_b4_beats_random(runs: Sequence[Run]) -> Claim:
    text = "At batch size 4, label recovery is still about 2× better than random."
    at4 = [r for r in runs if r.batch_size == 4]
    if not at4:
        return Claim(text, NOT_MEASURED, "no done runs at B = 4")
    semantic = stat(r.value("semantic_accuracy") for r in at4)
    if semantic is not None:
        what, acc = "semantic accuracy", semantic
        base = stat(r.value(SEMANTIC_BASELINE_KEY) or r.value("label_random_baseline") for r in at4)
    else:
        what, acc = "label accuracy", stat(r.value("label_accuracy") for r in at4)
        base = stat(r.value("label_random_baseline") for r in at4)
    if acc is None or base is None or base.mean <= 0:
        return Claim(text, NOT_MEASURED, "B = 4 runs lack label accuracy or its random baseline")
    ratio = acc.mean / base.mean
    evidence = (f"{what} {acc.text()} vs random {base.mean:.3f} at B = 4 over {acc.n} run(s): "
                f"{ratio:.2f}× random (needs ≥ 2×).")
    return Claim(text, HELD if ratio >= 2.0 else NOT_HELD, evidence)


def _paired_improvement(text: str, pairs, better: str, base: str, unit: str, base_ceiling: str) -> Claim:
    """HELD when the second value of the ``(base, better)`` pairs beats the first by more than
    MIN_EFFECT on average; not measured when the base already sits at the ceiling."""
    base_stat, better_stat = stat(b for b, _ in pairs), stat(v for _, v in pairs)
    evidence = f"{better} {better_stat.text()} vs {base} {base_stat.text()} over {len(pairs)} {unit}."
    if base_stat.mean >= 1.0 - MIN_EFFECT:
        return Claim(text, NOT_MEASURED, evidence + f" {base_ceiling} is already at the ceiling.")
    return Claim(text, HELD if better_stat.mean > base_stat.mean + MIN_EFFECT else NOT_HELD, evidence)


def claim_aggregation_helps(runs: Sequence[Run]) -> Claim:
    text = "Aggregating label evidence (over restarts/rounds) improves label recovery."
    pairs = [(r.value("semantic_accuracy"), r.value(AGGREGATED_KEYS)) for r in runs]
    pairs = [(s, a) for s, a in pairs if s is not None and a is not None]
    if not pairs:
        return Claim(text, NOT_MEASURED, "no run recorded both single-round and aggregated semantic accuracy")
    return _paired_improvement(text, pairs, "aggregated", "single", "run(s)", "Single-round accuracy")


def claim_oracle_guidance_helps(runs: Sequence[Run]) -> Claim:
    text = "Oracle guidance improves reconstruction quality (SSIM) over no guidance."
    points = guidance_points(runs)
    # Pair oracle with none on the same client batch: the same run (both SSIMs recorded) or runs
    # whose configs differ only in guidance settings (mode, weight, guide: every field named guid*).
    paired: dict[str, dict[str, float]] = {}
    for mode, r, v in points:
        key = repr(sorted((k, repr(x)) for k, x in r.config.items() if "guid" not in k))
        paired.setdefault(key, {})[mode] = v
    pairs = [(d["none"], d["oracle"]) for d in paired.values() if "none" in d and "oracle" in d]
    if not pairs:
        return Claim(text, NOT_MEASURED, "no runs compared oracle guidance with no guidance")
    return _paired_improvement(text, pairs, "SSIM with oracle guidance", "none", "pair(s)", "SSIM without guidance")


CLAIMS: tuple[Callable[[Sequence[Run]], Claim], ...] = (
    claim_leakage_drops, claim_b4_beats_random, claim_aggregation_helps, claim_oracle_guidance_helps)


def evaluate_claims(runs: Sequence[Run]) -> list[Claim]:
    return [check(runs) for check in CLAIMS]


# -- tables and page ------------------------------------------------------------------------------


def summary_table(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """Rows per (series, batch size): run count and mean ± std of every metric some run has."""
    metrics = [m for m in TABLE_METRICS if any(r.value(m) is not None for r in runs)]
    header = ["series", "B", "runs", *metrics]
    rows = []
    for label, group in group_series(runs).items():
        for b in sorted({r.batch_size for r in group}):
            at_b = [r for r in group if r.batch_size == b]
            cells = [label, str(b), str(len(at_b))]
            for m in metrics:
                s = stat(r.value(m) for r in at_b)
                cells.append("—" if s is None else s.text(1 if m in ("seconds", "psnr") else 3))
            rows.append(cells)
    return header, rows


def _table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.claims td { text-align: left; vertical-align: top; }
.HELD { color: #176617; font-weight: bold; } .DID-NOT-HOLD { color: #a11; font-weight: bold; }
.NOT-MEASURED { color: #777; font-weight: bold; }
figure { margin: 1em 0 2em; } img.plot { max-width: 100%; border: 1px solid #eee; }
.missing { color: #777; font-style: italic; }
"""

# Marks the page once every embedded image decoded, so a headless browser (or a person's devtools)
# can check that the plots render: <body data-images-decoded="N" data-images-total="N">.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var decoded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-decoded', String(decoded));
});
"""


def render_html(title: str, overview: list[tuple[str, str]], claims: Sequence[Claim], plots: Sequence[Plot],
                table: tuple[list[str], list[list[str]]], failed: Sequence[RunRecord]) -> str:
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>", f"<h1>{esc(title)}</h1>"]
    parts.append(_table_html(["", ""], overview))
    parts.append("<h2 id='claims'>Seed claims</h2><p>Claims of Malcewicz et al. (2025), checked on these runs.</p>")
    claim_rows = "".join(
        f"<tr><td>{esc(c.text)}</td><td class='{c.verdict.replace(' ', '-')}'>{esc(c.verdict)}</td>"
        f"<td>{esc(c.evidence)}</td></tr>" for c in claims)
    parts.append("<table class='claims'><thead><tr><th>claim</th><th>verdict</th><th>measured</th></tr></thead>"
                 f"<tbody>{claim_rows}</tbody></table>")
    parts.append("<h2>Plots</h2>")
    for p in plots:
        parts.append(f"<figure id='{p.name}'><h3>{esc(p.title)}</h3>")
        if p.png is not None:
            data = base64.b64encode(p.png).decode("ascii")
            parts.append(f"<img class='plot' alt='{esc(p.title)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{esc(p.caption)}</figcaption>")
        else:
            parts.append(f"<p class='missing'>{esc(p.missing)}</p>")
        parts.append("</figure>")
    parts.append("<h2>Results (mean ± standard deviation over seeds)</h2>")
    parts.append(_table_html(*table))
    if failed:
        parts.append("<h2>Failed runs</h2>")
        parts.append(_table_html(["run", "B", "model", "error"], [
            [r.id, str(r.config.get("batch_size")), str(r.config.get("model")), r.error or ""] for r in failed]))
    parts.append("</body></html>")
    return "\n".join(parts)


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    html: Path
    plots: dict[str, Path | None]
    claims: list[Claim]
    runs: int
    failed: int
    missing: dict[str, str] = field(default_factory=dict)


def build_report(out: str | Path) -> Report:
    """Read ``out``'s store; write ``out/report.html`` and ``out/<plot>.png``."""
    out = Path(out)
    with ResultStore(out, create=False) as store:
        records = store.runs()
    runs = load_runs(out, records)
    failed = [r for r in records if r.status == "failed"]
    names = sorted({r.experiment for r in records if r.experiment})
    plots = [make(runs) for make in PLOTS]
    written: dict[str, Path | None] = {}
    for p in plots:
        path = out / f"{p.name}.png"
        if p.png is not None:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(p.png)
            os.replace(tmp, path)
            written[p.name] = path
        else:
            path.unlink(missing_ok=True)  # a stale plot from an earlier report would contradict the page
            written[p.name] = None
    claims = evaluate_claims(runs)
    fields_ = varying_fields(runs)
    overview = [
        ("experiment", ", ".join(names) or "—"),
        ("runs", f"{len(runs)} done, {len(failed)} failed"),
        ("batch sizes", ", ".join(str(b) for b in sorted({r.batch_size for r in runs})) or "—"),
        ("seeds", ", ".join(str(s) for s in sorted({r.config.get("seed") for r in runs})) or "—"),
        ("series (fields that vary)", ", ".join(fields_) or "—"),
        ("store", str(store.path)),
    ]
    title = f"gradleak report: {', '.join(names) or out.name}"
    page = render_html(title, overview, claims, plots, summary_table(runs), failed)
    path = out / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return Report(path, written, claims, len(runs), len(failed), {p.name: p.missing for p in plots if p.missing})
