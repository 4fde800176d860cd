"""Rendering a leaderboard: the formatted table (Markdown, HTML), the numeric one (CSV, Parquet) and LaTeX."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import polars.selectors as cs

from ..engine.telemetry import INSTABILITY_PARTS
from ..records import stats
from .build import ALPHA, Leaderboard, Row, short_labels


def fmt(x: float | None, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, ∞ for infinity, – for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}g}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    """[lo, hi], or n/a when there is no interval."""
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci and not any(map(math.isnan, ci)) else "n/a"


def _delta_cells(r: Row) -> list[str]:
    d = r.delta
    if d is None or d.n == 0:
        return ["–", "–", "–"]
    mark = " *" if r.significant else ""
    return [fmt(d.mean) + mark, fmt_ci((d.lo, d.hi)), fmt(d.p, 2)]


def _cells(r: Row) -> list:
    """One row's formatted cells, in the order of `table`'s columns."""
    q, u = r.quality, r.instability
    return [
        r.rank,
        r.config,
        f"{r.n}{' (small n)' if r.small_n else ''}",
        r.diverged,
        f"{r.collapsed[0]}/{r.collapsed[1]}" if r.collapsed else "–",
        fmt(q.mean) + (f" ± {fmt(q.std, 2)}" if q.std is not None else ""),
        fmt(q.median),
        fmt_ci((q.lo, q.hi)),
        *_delta_cells(r),
        fmt(u.mean),
        fmt_ci((u.lo, u.hi)),
        *(fmt(r.parts[k], 3) for k in INSTABILITY_PARTS),
        fmt(r.steps_to_target),
        fmt(r.speedup, 3),
        "★" if r.pareto else "",
        r.knobs or "–",
        r.config_hash,
    ]


def table(lb: Leaderboard) -> pl.DataFrame:
    """The leaderboard as a flat table of strings (what the .md/.html files show)."""
    m = lb.metric
    names = ["rank", "config", "n", "diverged", "collapsed", f"{m} mean ± std", f"{m} median", f"{m} 95% t-CI",
             "Δ vs baseline", "Δ 95% t-CI", "Δ p (paired t)", "instability", "instability 95% t-CI",
             *INSTABILITY_PARTS, "steps to target", "speedup", "Pareto", "knobs vs baseline",
             "config_hash"]  # fmt: skip
    # ranked by instability itself: its quality columns already show it
    keep = [i for i, n in enumerate(names) if not (m == "instability" and n in ("instability", "instability 95% t-CI"))]
    rows = [[str(v) for i, v in enumerate(_cells(r)) if i in keep] for r in lb.rows]
    return pl.DataFrame(rows, schema=[names[i] for i in keep], orient="row")


def _delta_numbers(r: Row) -> dict:
    """The delta's columns: null for the baseline's own row and without shared seeds."""
    d = r.delta if r.delta is not None and r.delta.n else None
    return dict(zip(("delta", "delta_ci_lo", "delta_ci_hi", "delta_p"), (d.mean, d.lo, d.hi, d.p) if d else [None] * 4))


def _numbers(r: Row, lb: Leaderboard) -> dict:
    """One row as plain numbers, keyed by `NUMERIC_SCHEMA`'s columns (nan becomes null in `numeric_table`)."""
    q, u = r.quality, r.instability
    return {
        "rank": r.rank, "config": r.config, "config_hash": r.config_hash, "metric": lb.metric,
        "baseline": lb.baseline, "n": r.n, "small_n": r.small_n, "diverged": r.diverged,
        "collapsed": r.collapsed[0] if r.collapsed else None, "collapsed_of": r.collapsed[1] if r.collapsed else None,
        "seeds": list(r.seeds), "mean": q.mean, "std": q.std, "ci_lo": q.lo, "ci_hi": q.hi, "median": q.median,
        **_delta_numbers(r), "delta_significant": r.significant,
        "instability_mean": u.mean, "instability_ci_lo": u.lo, "instability_ci_hi": u.hi, **r.parts,
        "steps_to_target": r.steps_to_target, "speedup": r.speedup, "pareto": r.pareto, "knobs": r.knobs,
    }  # fmt: skip


NUMERIC_SCHEMA = {
    "rank": pl.Int64, "config": pl.Utf8, "config_hash": pl.Utf8, "metric": pl.Utf8, "baseline": pl.Utf8,
    "n": pl.Int64, "small_n": pl.Boolean, "diverged": pl.Int64, "collapsed": pl.Int64, "collapsed_of": pl.Int64,
    "seeds": pl.List(pl.Int64), **dict.fromkeys(["mean", "std", "ci_lo", "ci_hi", "median", "delta", "delta_ci_lo",
    "delta_ci_hi", "delta_p"], pl.Float64), "delta_significant": pl.Boolean,
    **dict.fromkeys(["instability_mean", "instability_ci_lo", "instability_ci_hi", *INSTABILITY_PARTS,
    "steps_to_target", "speedup"], pl.Float64), "pareto": pl.Boolean, "knobs": pl.Utf8,
}  # fmt: skip


def numeric_table(lb: Leaderboard) -> pl.DataFrame:
    """The leaderboard as plain numbers, one row per config (leaderboard.parquet; leaderboard.csv via `csv_text`):
    inf for a target never reached or a diverged mean, null where a value does not exist (the baseline's own
    delta, a 1-seed interval, a part no seed recorded, steps-to-target not computed).

    Generic column names (`mean`, `std`, `ci_lo`, `ci_hi`, `median` of the quality metric) with `metric` and
    `baseline` columns, so leaderboards of different metrics stack with `pl.concat`; `seeds` is a list."""
    df = pl.DataFrame([_numbers(r, lb) for r in lb.rows], schema=NUMERIC_SCHEMA)
    return df.with_columns(cs.float().fill_nan(None))


def csv_text(df: pl.DataFrame) -> str:
    """A numeric table as CSV, which holds no lists: a list such as `seeds` is written as "0;1;2" (`str.split(";")`
    reads it back)."""
    lists = [c for c, dtype in df.schema.items() if isinstance(dtype, pl.List)]
    return df.with_columns(pl.col(lists).cast(pl.List(pl.Utf8)).list.join(";")).write_csv(float_precision=None)


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "∞": r"$\infty$", "–": "--", "±": r"$\pm$"}  # fmt: skip


def tex(text: str) -> str:
    """`text` safe inside a LaTeX table cell."""
    return "".join(_TEX.get(c, c) for c in text)


@dataclass(frozen=True)
class TexNumber:
    """One siunitx cell: the mean and the half-width of its interval, rounded alike (or text, in braces)."""

    text: str
    integers: int = 0  # digits before the decimal marker, for `table-format`
    decimals: int = 0
    negative: bool = False
    uncertainty: int = 0  # digits of the half-width in compact form, 1.27(30): 2; 0 without one


def decimals_for(half: float) -> int:
    """Decimals that show a half-width to its first significant digit, or two when that digit is 1 or 2 (0.3,
    but 0.14 and 0.25); negative: round to tens, hundreds, ..."""
    mantissa, exponent = f"{half:.5e}".split("e")  # decimal digits: 0.29999999999999993 is 3.00000e-01
    leading, exponent = float(mantissa), int(exponent)
    return (2 if leading < 3 else 1) - 1 - exponent


def tex_number(mean: float | None, lo: float | None = None, hi: float | None = None) -> TexNumber:
    """`mean ± half` with digits set by the interval's width; without an interval (one seed, no spread) the
    mean to 3 significant digits; -- for none, ∞ for a diverged mean."""
    if mean is None or math.isnan(mean):
        return TexNumber("{--}")
    if math.isinf(mean):
        return TexNumber("{$\\infty$}" if mean > 0 else "{$-\\infty$}")
    half = (hi - lo) / 2 if lo is not None and hi is not None and math.isfinite(hi - lo) else 0.0
    if half > 1e-9 * abs(mean):  # below: identical seeds up to rounding, no spread to show
        places = decimals_for(half)
    else:
        places = 2 - math.floor(math.log10(abs(mean))) if mean else 2
    shown = round(mean, places) + 0.0  # + 0.0: no "-0"
    text = f"{shown:.{max(places, 0)}f}"
    digits = len(text.lstrip("-").split(".")[0])
    if half <= 1e-9 * abs(mean):
        return TexNumber(text, digits, max(places, 0), shown < 0)
    spread = round(half, places)
    compact = str(round(spread * 10 ** max(places, 0)))
    return TexNumber(f"{text} \\pm {spread:.{max(places, 0)}f}", digits, max(places, 0), shown < 0, len(compact))


def table_format(cells: list[TexNumber]) -> str:
    """siunitx's `table-format` that holds every number of a column (-1.2(2): sign, digits, decimals, half-width)."""
    numbers = [c for c in cells if c.integers]
    if not numbers:
        return "1.0"
    sign = "-" if any(c.negative for c in numbers) else ""
    unc = max(c.uncertainty for c in numbers)
    shape = f"{sign}{max(c.integers for c in numbers)}.{max(c.decimals for c in numbers)}"
    return shape + (f"({unc})" if unc else "")


def _tex_caption(lb: Leaderboard, sweep: str | None, baseline: str | None, with_delta: bool) -> str:
    """What the table shows: metric and direction, the sweep, the baseline, the intervals and the digits."""
    better = "lower" if lb.direction == "minimize" else "higher"
    where = f" of the configs of sweep \\texttt{{{tex(sweep)}}}" if sweep else ""
    against = f", against the baseline \\texttt{{{tex(baseline)}}}" if with_delta and baseline else ""
    delta = r"; $\Delta$ = config $-$ baseline, paired on shared seeds" if with_delta else ""
    return (
        f"\\texttt{{{tex(lb.metric)}}} ({better} is better){where}{against}: mean $\\pm$ half-width of the 95\\,\\% "
        f"Student-$t$ interval over seeds, rounded to the interval's leading digit(s){delta}."
    )


def _tex_legend(lb: Leaderboard, cells: list[list[TexNumber]], marks: bool) -> str:
    """The markers the table uses, explained."""
    texts = {c.text for row in cells for c in row}
    items = []
    if marks:
        items.append(f"$^*$ significant at {ALPHA:g} after Holm's correction over every config (paired $t$-test)")
    if "{--}" in texts:
        items.append("-- none (the baseline's own row, or no interval)")
    if texts & {"{$\\infty$}", "{$-\\infty$}"}:
        items.append("$\\infty$ a diverged seed, counted as the worst value")
    if any(r.small_n for r in lb.rows):
        items.append(f"$n < {stats.SMALL_N}$: wide intervals, fragile ranks")
    return "; ".join(items) + "." if items else ""


def to_latex(lb: Leaderboard) -> str:
    """A booktabs table for a paper, in a `table` float with a caption and a legend: config (short labels; the
    sweep in the caption), n, the metric's mean ± 95% t-interval, the paired delta vs the baseline ($^*$ =
    significant after Holm) and instability, in siunitx S columns aligned on the decimal marker."""
    with_delta = any(r.delta is not None for r in lb.rows)
    with_instability = lb.metric != "instability"
    labels, sweep = short_labels([r.config for r in lb.rows])
    baseline = lb.baseline.removesuffix(f"@{sweep}") if lb.baseline and sweep else lb.baseline
    cells = []
    for r in lb.rows:
        d = r.delta if r.delta is not None and r.delta.n else None
        row = [tex_number(r.quality.mean, r.quality.lo, r.quality.hi)]
        if with_delta:
            row.append(tex_number(d.mean, d.lo, d.hi) if d else TexNumber("{--}"))
        if with_instability:
            row.append(tex_number(r.instability.mean, r.instability.lo, r.instability.hi))
        cells.append(row)
    formats = [table_format(list(col)) for col in zip(*cells)] if cells else []
    spec = ["l", "r", f"S[table-format={formats[0]}]"] if formats else ["l", "r", "S"]
    head = ["config", "$n$", f"{{{tex(lb.metric)}}}"]
    if with_delta:
        spec += [f"S[table-format={formats[1]}]", "@{}l"]
        head += [r"{$\Delta$ vs baseline}", ""]
    if with_instability:
        spec.append(f"S[table-format={formats[-1]}]" if formats else "S")
        head.append("{instability}")
    marks = any(r.significant for r in lb.rows)
    lines = [
        "% generated by stabench leaderboard; needs \\usepackage{booktabs} and \\usepackage{siunitx}",
        r"\begin{table}",
        r"\centering",
        f"\\caption{{{_tex_caption(lb, sweep, baseline, with_delta)}}}",
        f"\\label{{tab:{re.sub('[^A-Za-z0-9]+', '-', lb.metric + '-' + (lb.baseline or 'none'))}}}",
        r"\sisetup{uncertainty-mode=separate, table-align-uncertainty=false}",
        f"\\begin{{tabular}}{{{' '.join(spec)}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for r, label_, row in zip(lb.rows, labels, cells):
        out = [tex(label_), str(r.n), row[0].text]
        if with_delta:
            out += [row[1].text, "$^*$" if r.significant else ""]
        if with_instability:
            out.append(row[-1].text)
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    legend = _tex_legend(lb, cells, marks)
    if legend:
        lines += [r"\par\smallskip", f"{{\\footnotesize {legend}\\par}}"]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def _baseline_line(lb: Leaderboard) -> str:
    """What Δ, the target, steps-to-target and speedup mean here (or why there are none)."""
    lower = lb.direction == "minimize"
    line = (
        f"Baseline: `{lb.baseline}`. Δ = config − baseline ({'negative' if lower else 'positive'} is better), "
        f"paired on shared seeds, with a Student-t interval and the paired t-test's p; * = significant at "
        f"{ALPHA:g} after Holm's correction over every config. "
    )
    if lb.steps_note:
        return line + f"Steps to target and speedup: – ({lb.steps_note})."
    target = fmt(lb.target) if lb.target is not None else "none (a baseline seed diverged)"
    return line + (
        f"Target for steps-to-target = the baseline's worst seed's final {lb.metric} (its "
        f"{'largest' if lower else 'smallest'}), so every baseline seed reaches it ({target}); steps are read on "
        "the weight set each trial chose (on training FID when scored) and interpolated between evaluation "
        "points, ∞ = never reached (AlgoPerf); speedup = median over shared seeds of baseline / config steps "
        "(∞ counted as the largest value)."
    )


def _ranking_lines(lb: Leaderboard) -> list[str]:
    """How ranks are given, and how stable they are."""
    worst = "∞" if lb.direction == "minimize" else "-∞"
    tau = fmt(lb.kendall_tau, 3) if lb.tau_note is None else f"omitted ({lb.tau_note})"
    return [
        f"Rank: configs without a diverged seed first (a diverged seed counts as {worst}), then by mean "
        f"{lb.metric}; rank = 1 + the number of configs whose 95% t-interval of {lb.metric} lies entirely on "
        "the better side of this config's (a one-seed config: its value), so configs whose order is not "
        "established share ranks.",
        f"Ranking stability (Kendall tau, two disjoint seed halves): {tau}.",
    ]


def header_lines(lb: Leaderboard) -> list[str]:
    """The notes above the table: what was measured, against what, and how to read it."""
    n_seeds = sorted({r.n for r in lb.rows})
    lines = [
        f"Metric: `{lb.metric}` ({'lower' if lb.direction == 'minimize' else 'higher'} is better), from "
        f"{lb.n_records} records in {len(lb.rows)} configs; seeds per config: {', '.join(map(str, n_seeds)) or '–'}"
        + (f"; {', '.join(map(str, lb.samples))} samples per FID/KID" if lb.samples else "")
        + (f"; evaluated at steps {', '.join(map(str, lb.eval_steps))}" if lb.eval_steps else "")
        + "."
    ]
    if lb.baseline and not any(r.config == lb.baseline for r in lb.rows):
        lines.append(
            f"Baseline `{lb.baseline}` has no records here: no deltas or speedups (run it into this store "
            "with `stabench baselines`, or pass --baseline with a label from the table)."
        )
    elif lb.baseline:
        lines.append(_baseline_line(lb))
    if lb.floor is not None:
        how = "two halves of the reference, old readout" if lb.old_floor else "training images scored like samples"
        lines.append(f"Floor ({how}): {lb.metric} = {fmt(lb.floor)}.")
    if any(r.small_n for r in lb.rows):
        lines.append(f"(small n) = fewer than {stats.SMALL_N} seeds: wide intervals, fragile ranks.")
    lines += _ranking_lines(lb)
    lines.append(
        "collapsed = runs whose unweighted probe loss returns to, or never leaves, the level of predicting zero "
        "noise, of the runs that record it (– = none does). ★ = Pareto front of quality vs instability. "
        "Intervals: 95% Student-t over seeds; median over seeds. instability = "
        + " + ".join(INSTABILITY_PARTS)
        + " (weighting-free, docs/metrics.md); it and its parts are means over the seeds that recorded them "
        "(– = none did)."
    )
    if lb.old_readout:
        lines.append(
            f"{lb.old_readout} records come from the old readout (schema 1): their instability is the old, "
            "weighting-dependent formula and they lack its new parts (–); compare such rows only with each other."
        )
    return lines


def to_markdown(df: pl.DataFrame, lb: Leaderboard, plots: list[str], omitted: Sequence[str] = ()) -> str:
    """leaderboard.md: the notes, the formatted table and the figures (PNG shown, SVG linked), and the figures
    left out with the reason."""
    cols = [c for c in df.columns if c != "config_hash"]
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [
        "# Leaderboard",
        "",
        *header_lines(lb),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in df.select(cols).iter_rows():
        lines.append("| " + " | ".join(esc(v) for v in row) + " |")
    if plots or omitted:
        lines += ["", "## Figures", ""]
    for p in map(Path, plots):
        lines += [f"![{p.stem}]({p.name})", "", f"[{p.stem} (SVG)]({p.with_suffix('.svg').name})", ""]
    lines += [f"- {why}" for why in omitted]
    return "\n".join(lines).rstrip("\n") + "\n"


# Sorting in the page itself (no network, no library): a click on a header sorts by that column, a second click
# reverses; `#sort=<column>` or `#sort=-<column>` in the URL sorts on load. Cells sort by their leading number
# (∞ after every finite value, – and text last), so "2.98 ± 0.95" sorts as 2.98.
SORT_SCRIPT = """
function key(cell) {
  const t = cell.textContent.trim();
  if (t.startsWith("∞")) return Infinity;
  if (t.startsWith("-∞")) return -Infinity;
  const v = parseFloat(t);
  return isNaN(v) ? null : v;
}
function sortBy(table, col, desc) {
  const rows = Array.from(table.tBodies[0].rows);
  rows.sort((a, b) => {
    const x = key(a.cells[col]), y = key(b.cells[col]);
    if (x === null || y === null) return (x === null) - (y === null);
    return desc ? y - x : x - y;
  });
  rows.forEach(r => table.tBodies[0].appendChild(r));
  table.dataset.sorted = (desc ? "-" : "") + table.tHead.rows[0].cells[col].textContent;
}
const table = document.getElementById("leaderboard");
Array.from(table.tHead.rows[0].cells).forEach((th, col) => th.addEventListener("click", () => {
  sortBy(table, col, table.dataset.sorted === th.textContent);
}));
const m = decodeURIComponent(location.hash).match(/^#sort=(-?)(.+)$/);
if (m) {
  const col = Array.from(table.tHead.rows[0].cells).findIndex(th => th.textContent === m[2]);
  if (col >= 0) sortBy(table, col, m[1] === "-");
}
"""


def inline_html(text: str) -> str:
    """One line of the notes as HTML: escaped, with Markdown's `code` spans as <code> (never a literal backtick)."""
    import html
    import re

    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False)).replace("`", "")


# The table scrolls inside its own box (both ways, so the header can stick to its top) and never widens the page:
# every column is reachable at any window width. The config column sticks to the left while scrolling.
PAGE_STYLE = """
body{font-family:sans-serif;margin:0 1em}
.table-scroll{overflow:auto;max-width:100%;max-height:85vh;border:1px solid #ccc}
table{border-collapse:separate;border-spacing:0}
td,th{border-right:1px solid #ddd;border-bottom:1px solid #ddd;padding:3px 6px;white-space:nowrap;background:#fff}
td.wrap{white-space:normal;min-width:18em}
thead th{position:sticky;top:0;z-index:1;cursor:pointer;background:#f4f4f4}
tr>:first-child{position:sticky;left:0;z-index:1;font-weight:bold}
thead th:first-child{z-index:2}
code{background:#f4f4f4;padding:0 2px}
img{max-width:100%}
"""

WRAPPED = ("knobs vs baseline",)  # free-text columns that may wrap


def _html_table(df: pl.DataFrame) -> str:
    """The table, config first (the column that sticks), every cell escaped."""
    import html

    df = df.select("config", pl.exclude("config"))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    wrap = [c in WRAPPED for c in df.columns]
    body = "".join(
        "<tr>" + "".join(f"<td{' class=wrap' if w else ''}>{html.escape(v)}</td>" for v, w in zip(row, wrap)) + "</tr>"
        for row in df.iter_rows()
    )
    table = f"<table id='leaderboard'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<div class='table-scroll'>{table}</div>"


def to_html(df: pl.DataFrame, lb: Leaderboard, plots: list[str], omitted: Sequence[str] = ()) -> str:
    """leaderboard.html: the same notes, table and plots as one self-contained page (plots embedded as data URIs,
    columns sortable by a click or by `#sort=<column>` in the URL, the table scrolling in its own box)."""
    import base64
    import html

    imgs = "".join(
        f'<p><img src="data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()}" '
        f'alt="{html.escape(Path(p).stem)}"></p>'
        for p in plots
    )
    notes = "".join(f"<p>{inline_html(line)}</p>" for line in header_lines(lb))
    left_out = "".join(f"<p>{inline_html(line)}</p>" for line in omitted)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>stabench leaderboard: {html.escape(lb.metric)}</title><style>{PAGE_STYLE}</style></head><body>"
        f"<h1>Leaderboard</h1>{notes}{_html_table(df)}{imgs}{left_out}<script>{SORT_SCRIPT}</script></body></html>\n"
    )


def parquet_bytes(df: pl.DataFrame) -> bytes:
    """The table as Parquet bytes (no statistics: the same table gives the same bytes)."""
    import io

    buf = io.BytesIO()
    df.write_parquet(buf, statistics=False)
    return buf.getvalue()
