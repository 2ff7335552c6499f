"""The report page: one self-contained HTML document (PNGs embedded as base64, no external links),
so it opens offline."""

from __future__ import annotations

import base64
import html
from typing import Sequence

from ...metrics.intervals import stat
from ..store import RunRecord
from .verdicts import ALPHA, MIN_UNITS, Claim
from .plots import Plot
from .runs import AGGREGATED_KEY, NO_GUIDANCE_SSIM_KEY, SEMANTIC_BASELINE_KEY, Run, group_series

TABLE_METRICS = ("label_accuracy", "label_random_baseline", "ssim", "psnr", "original_semantic_accuracy",
                 "semantic_accuracy", AGGREGATED_KEY, SEMANTIC_BASELINE_KEY, "search_accuracy",
                 NO_GUIDANCE_SSIM_KEY, "seconds")
Table = tuple[list[str], list[list[str]]]


def summary_table(runs: Sequence[Run]) -> Table:
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
.NOT-MEASURED { color: #777; font-weight: bold; } .INCONCLUSIVE { color: #a60; font-weight: bold; }
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


CLAIM_COLUMNS = ("", "claim", "quantity", "effect", "claimed", "95% CI", "n", "p (paired)", "verdict", "details")
RULES = ("Each claim is an effect claimed to exceed a threshold, with a 95% percentile-bootstrap interval "
         "(resampling images for per-image SSIM, runs otherwise) and, for paired comparisons, the Wilcoxon "
         f"signed-rank p-value. HELD: the interval lies wholly beyond the threshold in the claimed direction "
         f"(and p < {ALPHA:g} when paired). DID NOT HOLD: the interval excludes every effect in the claimed "
         f"direction (and p < {ALPHA:g} when paired, unless every pair is identical). INCONCLUSIVE: otherwise, "
         f"or fewer than {MIN_UNITS} units in a group. NOT MEASURED: the runs lack the data. Claims 1-3 read the "
         "unguided runs (oracle guidance hands the attacker the true class).")


def _claims_html(claims: Sequence[Claim]) -> str:
    esc = html.escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(x)}</td>" for x in (
            c.key, c.text, c.quantity, c.effect_text, c.threshold or "—", c.ci_text, c.n_text, c.p_text))
        + f"<td class='{c.verdict.replace(' ', '-')}'>{esc(c.verdict)}</td><td>{esc(c.details)}</td></tr>"
        for c in claims)
    head = "".join(f"<th>{esc(h)}</th>" for h in CLAIM_COLUMNS)
    return (f"<p>{esc(RULES)}</p><table class='claims'><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _plot_html(p: Plot) -> str:
    esc = html.escape
    if p.png is None:
        body = f"<p class='missing'>{esc(p.missing)}</p>"
    else:
        data = base64.b64encode(p.png).decode("ascii")
        body = (f"<img class='plot' alt='{esc(p.title)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{esc(p.caption)}</figcaption>")
    return f"<figure id='{p.name}'><h3>{esc(p.title)}</h3>\n{body}\n</figure>"


def render_html(title: str, overview: list[tuple[str, str]], claims: Sequence[Claim], plots: Sequence[Plot],
                table: Table, failed: Sequence[RunRecord], extra: str = "") -> str:
    """The page: overview, claims with verdicts, plots, ``extra`` sections (HTML, e.g. "where attacks
    stop"), the results table and any failed runs."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>", f"<h1>{esc(title)}</h1>",
             _table_html(["", ""], overview),
             "<h2 id='claims'>Seed claims</h2><p>Claims of Malcewicz et al. (2025), checked on these runs.</p>",
             _claims_html(claims), "<h2>Plots</h2>", *map(_plot_html, plots), extra,
             "<h2>Results (mean ± standard deviation over seeds)</h2>", _table_html(*table)]
    if failed:
        parts.append("<h2>Failed runs</h2>")
        parts.append(_table_html(["run", "B", "model", "error"], [
            [r.id, str(r.config.get("batch_size")), str(r.config.get("model")), r.error or ""] for r in failed]))
    parts.append("</body></html>")
    return "\n".join(parts)
