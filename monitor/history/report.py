"""Plots (matplotlib PNG) and a self-contained HTML report of what changed in the history between two ranges:
every image is embedded as base64, so the file opens anywhere with no network and no side files."""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitor.history.analysis import GRANULARITIES, Comparison, Selection, Trend, compare, cooccur, trend
from monitor.history.store import HistoryStore, NoDataError

__all__ = ["plot_comparison", "plot_trend", "render_report", "write_report", "auto_granularity"]


def _figure(width: float, height: float):
    # Figure without pyplot: no global state, no GUI backend, safe in threads and tests.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig, path: str | Path | None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def plot_comparison(
    cmp: Comparison,
    path: str | Path | None = None,
    *,
    k: int = 10,
    by: str = "prevalence",
    significant_only: bool = True,
) -> bytes:
    """Bar chart of the top ``k`` rising and falling concepts (baseline vs current); returns PNG bytes."""
    rows = cmp.rows("up", k, by=by, significant_only=significant_only)[::-1]
    rows = cmp.rows("down", k, by=by, significant_only=significant_only) + rows
    fig = _figure(8, max(2.5, 0.32 * len(rows) + 1.2))
    ax = fig.add_subplot()
    key_b, key_c, label = (
        ("baseline_prevalence", "current_prevalence", "prevalence (fraction of images)")
        if by == "prevalence"
        else ("baseline_mean", "current_mean", "mean activation")
    )
    if rows:
        y = np.arange(len(rows))
        ax.barh(y - 0.2, [r[key_b] for r in rows], height=0.4, label="baseline", color="#9aa5b1")
        ax.barh(y + 0.2, [r[key_c] for r in rows], height=0.4, label="current", color="#d9480f")
        ax.set_yticks(y, [r["concept"] for r in rows])
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no significant change", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(label)
    ax.set_title("top falling (bottom) and rising (top) concepts")
    return _png(fig, path)


def plot_trend(
    tr: Trend, path: str | Path | None = None, *, metric: str = "prevalence", alarms: Sequence[Any] = ()
) -> bytes:
    """Line per concept over time (prevalence with a 95% Wilson band, or mean activation); returns PNG bytes.

    The x axis spans exactly the trend's buckets (one bucket is drawn as its own width, not a year of empty axis);
    ``alarms`` (records with ``window_end``) are marked where they fired."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    if metric not in ("prevalence", "activation"):
        raise ValueError(f"metric must be 'prevalence' or 'activation', got {metric!r}")
    fig = _figure(9, 3.8)
    ax = fig.add_subplot()
    width = GRANULARITIES[tr.granularity][0]
    # each point sits in the middle of its bucket, so a single bucket still has a visible place on the axis
    x = ((tr.bucket_start + width / 2) * 1000).astype(np.int64).astype("datetime64[ms]")
    values = tr.prevalence if metric == "prevalence" else tr.mean_activation
    lo, hi = tr.prevalence_interval() if metric == "prevalence" else (None, None)
    for j, name in enumerate(tr.concepts):
        line = ax.plot(x, values[:, j], label=name, marker="." if len(x) < 60 else None)[0]
        if lo is not None:
            ax.fill_between(x, lo[:, j], hi[:, j], color=line.get_color(), alpha=0.15, linewidth=0)
    first, last = float(tr.bucket_start[0]), float(tr.bucket_start[-1]) + width
    fired = sorted({float(a.window_end) for a in alarms if first <= float(a.window_end) <= last})
    for i, t in enumerate(fired):
        ax.axvline(np.datetime64(int(t * 1000), "ms"), color="#c92a2a", linestyle="--", linewidth=0.8,
                   label="alarm fired" if i == 0 else None)
    ax.set_xlim(np.datetime64(int(first * 1000), "ms"), np.datetime64(int(last * 1000), "ms"))
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_ylabel("prevalence" if metric == "prevalence" else "mean activation")
    ax.set_title(f"{metric} per {tr.granularity} bucket (UTC)")
    ax.legend(loc="upper left", fontsize="small", ncols=min(4, max(1, len(tr.concepts) + bool(fired))))
    return _png(fig, path)


# Candidate trend buckets, finest first; a report takes the finest that gives at most _MAX_TREND_POINTS points.
_AUTO_STEPS = ("1m", "5m", "15m", "1h", "6h", "1d", "1w")
_MAX_TREND_POINTS = 60


def auto_granularity(start: float, end: float) -> str:
    """The finest bucket from 1m to 1w that splits [start, end) into at most 60 buckets, so a short range still
    gets a readable line (25 minutes -> 1m, a day -> 1h, a month -> 1d, a year -> 1w).

    >>> auto_granularity(0, 25 * 60), auto_granularity(0, 86400), auto_granularity(0, 30 * 86400)
    ('1m', '1h', '1d')
    """
    span = max(float(end) - float(start), 0.0)
    for name in _AUTO_STEPS:
        if span / GRANULARITIES[name][0] <= _MAX_TREND_POINTS:
            return name
    return _AUTO_STEPS[-1]


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _pct(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


def _num(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _concept_table(rows: list[dict[str, Any]], css_class: str) -> str:
    if not rows:
        return '<p class="empty">none significant at this level</p>'
    head = (
        "<tr><th>concept</th><th>baseline</th><th>current</th><th>Cohen's h</th><th>q (prevalence)</th>"
        "<th>mean act. baseline → current</th><th>SMD</th><th>q (mean)</th></tr>"
    )
    body = "".join(
        f'<tr><td class="concept">{html.escape(r["concept"])}</td><td>{_pct(r["baseline_prevalence"])}</td>'
        f'<td>{_pct(r["current_prevalence"])}</td><td>{r["cohens_h"]:+.3f}</td><td>{_num(r["q_prevalence"], 2)}</td>'
        f'<td>{r["baseline_mean"]:.4f} → {r["current_mean"]:.4f}</td><td>{r["smd"]:+.3f}</td>'
        f'<td>{_num(r["q_mean"], 2)}</td></tr>'
        for r in rows
    )
    return f'<table class="{css_class}">{head}{body}</table>'


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d5dd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{padding:.25rem .6rem;border-bottom:1px solid #e4e7ec;
text-align:right}td.concept,th:first-child{text-align:left;font-weight:600}img{max-width:100%}
.meta{color:#5b6472;font-size:.85rem}.empty{color:#5b6472;font-style:italic}
"""


def render_report(
    store: HistoryStore,
    *,
    start: str | float,
    end: str | float,
    baseline_start: str | float | None = None,
    baseline_end: str | float | None = None,
    stream: str | Sequence[str] | None = None,
    where: Mapping[str, Any] | None = None,
    baseline_where: Mapping[str, Any] | None = None,
    top: int = 15,
    granularity: str | None = None,
    alpha: float = 0.05,
) -> str:
    """HTML of a report comparing [start, end) with a baseline (default: the equally long range just before)."""
    current = Selection.make(start, end, stream, where)
    if current.start is None or current.end is None:
        raise ValueError("a report needs both start and end")
    b_start, b_end = baseline_range(current.start, current.end, baseline_start, baseline_end)
    baseline = Selection.make(b_start, b_end, stream, where if baseline_where is None else baseline_where)
    cmp = compare(store, baseline, current, alpha=alpha)
    rising = cmp.rows("up", top)
    falling = cmp.rows("down", top)
    span_lo, span_hi = min(baseline.start, current.start), max(baseline.end, current.end)
    gran = granularity or auto_granularity(span_lo, span_hi)
    movers = [r["concept"] for r in rising[:5]] + [r["concept"] for r in falling[:3]]
    sections = []
    summary = cmp.summary()
    sb, sc = summary["baseline"], summary["current"]
    sections.append(
        "<h2>Summary</h2><table><tr><th></th><th>baseline</th><th>current</th></tr>"
        f"<tr><td class=concept>range</td><td>{html.escape(baseline.describe())}</td>"
        f"<td>{html.escape(current.describe())}</td></tr>"
        f"<tr><td class=concept>images</td><td>{sb['n_images']:,}</td><td>{sc['n_images']:,}</td></tr>"
        f"<tr><td class=concept>windows</td><td>{sb['n_windows']:,}</td><td>{sc['n_windows']:,}</td></tr>"
        f"<tr><td class=concept>mean fidelity (cosine)</td><td>{_num(sb['mean_fidelity'])}</td>"
        f"<td>{_num(sc['mean_fidelity'])}</td></tr>"
        f"<tr><td class=concept>mean active concepts (l0)</td><td>{_num(sb['mean_l0'])}</td>"
        f"<td>{_num(sc['mean_l0'])}</td></tr></table>"
        f'<p class="meta">{html.escape(summary["tests"])}. {html.escape(summary["multiple_testing"])}.</p>'
    )
    sections.append(f"<h2>Rising concepts</h2>{_concept_table(rising, 'rising')}")
    sections.append(f"<h2>Falling concepts</h2>{_concept_table(falling, 'falling')}")
    sections.append("<h2>Largest changes</h2>" + _img(plot_comparison(cmp, k=min(top, 10)), "top changes"))
    alarms = store.read_alarms(stream, current.start, current.end)
    if movers and not (where or baseline_where):  # slices compare groups, not times: no trend to draw
        tr = trend(store, movers, start=span_lo, end=span_hi, stream=stream, granularity=gran)
        sections.append(
            f"<h2>Trend of the largest movers (per {gran})</h2>"
            f'<p class="meta trend-buckets">{len(tr.bucket_start)} buckets of {gran} from '
            f"{html.escape(_iso(float(tr.bucket_start[0])))} (baseline and current range)</p>"
            + _img(plot_trend(tr, alarms=alarms), "trend of movers")
        )
    sections.append(_alarm_table(alarms))
    if rising and store.has_codes(current.streams):
        try:
            co = cooccur(store, current, concepts=[rising[0]["concept"]], limit=10, min_count=3)
            items = "".join(
                f"<tr><td class=concept>{html.escape(p['concept_b'])}</td><td>{p['count']}</td>"
                f"<td>{_pct(p['p_b_given_a'])}</td><td>{p['lift']:.2f}</td><td>{p['npmi']:+.3f}</td></tr>"
                for p in co.pairs
            )
            sections.append(
                f"<h2>What co-occurs with '{html.escape(rising[0]['concept'])}' now</h2><table><tr><th>concept</th>"
                f"<th>images</th><th>P(concept | top riser)</th><th>lift</th><th>NPMI</th></tr>{items}</table>"
            )
        except NoDataError:
            pass
    title = f"splice-monitor history report: {current.describe()}"
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="meta">store {html.escape(str(store.root))} · concept space '
        f'<code>{html.escape(store.concept_space)}</code> ({store.n_concepts:,} concepts) · generated {generated}</p>'
        + "".join(sections)
        + "</body></html>"
    )


def _alarm_table(alarms: Sequence[Any], limit: int = 200) -> str:
    """The alarms that fired in the current range, in time order: when (the end of the window that raised it),
    the window, what drifted, its state, effect and p-value."""
    if not alarms:
        return '<h2>Alarms in the current range (0)</h2><p class="empty">no alarm fired in this range</p>'
    rows = "".join(
        f"<tr><td>{html.escape(_iso(a.window_end))}</td>"
        f"<td>{html.escape(_iso(a.window_start))} .. {html.escape(_iso(a.window_end))}</td>"
        f"<td class=concept>{html.escape(a.describe())}</td><td>{html.escape(a.state)}</td>"
        f"<td>{_num(a.effect_size)}</td><td>{_num(a.p_value, 2)}</td></tr>"
        for a in sorted(alarms, key=lambda a: (a.window_end, a.stream, a.concept))[:limit]
    )
    more = f'<p class="meta">showing the first {limit} of {len(alarms)}</p>' if len(alarms) > limit else ""
    return (
        f'<h2>Alarms in the current range ({len(alarms)})</h2><table class="alarms"><tr><th>fired (UTC)</th>'
        f"<th>window</th><th>alarm</th><th>state</th><th>effect</th><th>p</th></tr>{rows}</table>{more}"
    )


def baseline_range(
    start: float, end: float, baseline_start: str | float | None, baseline_end: str | float | None
) -> tuple[float, float]:
    """The baseline range: as given, or the range of the same length ending where the current one starts."""
    from monitor.history.store import parse_time

    bs, be = parse_time(baseline_start, name="baseline_start"), parse_time(baseline_end, name="baseline_end")
    length = end - start
    if bs is None and be is None:
        return start - length, start
    if bs is None:
        return be - length, be
    if be is None:
        return bs, bs + length
    return bs, be


def write_report(path: str | Path, html_text: str) -> Path:
    """Write the report atomically (temporary file then rename)."""
    from monitor.atomic import atomic_write_text

    return atomic_write_text(path, html_text)


def _iso(t: float) -> str:
    from monitor.history.analysis import _iso as iso

    return iso(t) or ""
