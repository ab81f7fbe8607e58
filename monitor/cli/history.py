"""``splice-monitor history list|compare|trend|cooccur|report|compact``: questions asked of the Parquet history."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Any

DEFAULT_STORE = os.environ.get("SPLICE_MONITOR_HISTORY", "history")
# monitor.history.analysis.GRANULARITIES, spelled out so that --help does not import pyarrow (a test keeps them equal)
GRANULARITY_CHOICES = ("1m", "5m", "15m", "1h", "6h", "1d", "1w", "hour", "day", "week")


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "history",
        help="compare time ranges or slices, draw trends, write reports from the Parquet history",
        description="Analyse the Parquet history written by `run`/`backfill`. Times are ISO-8601 (UTC when no "
        "zone is given), unix seconds, or 'now'; a range is [--from, --to).",
    )
    actions = parser.add_subparsers(dest="history_action", metavar="ACTION", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store", default=DEFAULT_STORE, help="history store directory (default: $SPLICE_MONITOR_HISTORY or ./history)"
    )
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    sel = argparse.ArgumentParser(add_help=False)
    sel.add_argument("--from", dest="start", help="range start (inclusive)")
    sel.add_argument("--to", dest="end", help="range end (exclusive)")
    sel.add_argument("--stream", action="append", help="only this stream (repeatable; default all)")
    sel.add_argument(
        "--slice",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only images whose metadata KEY equals VALUE (repeatable, all must hold; needs per-image codes)",
    )

    p = actions.add_parser("list", parents=[common, fmt], help="what the store holds")
    p.set_defaults(func=_run_list)

    p = actions.add_parser(
        "compare",
        parents=[common, fmt, sel],
        help="top rising and falling concepts between a baseline and the current range/slice",
        description="Compare the current selection (--from/--to/--slice) with a baseline: by default the range of "
        "the same length just before --from; or --baseline-from/--baseline-to; or --baseline-slice for two "
        "metadata slices over the same range.",
    )
    _baseline_args(p)
    p.add_argument("--top", type=int, default=20, help="concepts per direction (default 20)")
    p.add_argument("--by", choices=("prevalence", "activation"), default="prevalence", help="rank by this effect")
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate level (default 0.05)")
    p.add_argument("--all", action="store_true", help="rank every concept, not only the significant ones")
    p.add_argument("--plot", metavar="OUT.png", help="also write a bar chart PNG")
    p.set_defaults(func=_run_compare)

    p = actions.add_parser("trend", parents=[common, fmt, sel], help="prevalence/activation of concepts over time")
    p.add_argument("concepts", nargs="+", metavar="CONCEPT", help="concept names (or ids)")
    p.add_argument("--granularity", choices=GRANULARITY_CHOICES, default="day", metavar="BUCKET",
                   help="bucket width: 1m, 5m, 15m, 1h, 6h, 1d, 1w (or hour, day, week; default day)")
    p.add_argument("--metric", choices=("prevalence", "activation"), default="prevalence", help="metric to plot")
    p.add_argument("--plot", metavar="OUT.png", help="also write a line chart PNG")
    p.set_defaults(func=_run_trend)

    p = actions.add_parser("cooccur", parents=[common, fmt, sel], help="concepts active in the same images")
    p.add_argument("--concept", action="append", help="pair this concept with all others (repeatable)")
    p.add_argument("--top-concepts", type=int, default=200, help="without --concept: pairs among the N most frequent")
    p.add_argument("--min-count", type=int, default=5, help="drop pairs seen in fewer images (default 5)")
    p.add_argument("--limit", type=int, default=20, help="pairs to print (default 20)")
    p.add_argument("--by", choices=("npmi", "lift", "count"), default="npmi", help="ranking (default npmi)")
    p.set_defaults(func=_run_cooccur)

    p = actions.add_parser(
        "report", parents=[common, sel], help="self-contained HTML report (tables and plots) for a range"
    )
    _baseline_args(p)
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="where to write the report")
    p.add_argument("--top", type=int, default=15, help="concepts per direction (default 15)")
    p.add_argument("--granularity", choices=GRANULARITY_CHOICES, metavar="BUCKET",
                   help="trend bucket: 1m, 5m, 15m, 1h, 6h, 1d, 1w (default: the finest giving at most 60 points "
                        "over baseline and current range)")
    p.add_argument("--alpha", type=float, default=0.05, help="false discovery rate level (default 0.05)")
    p.set_defaults(func=_run_report)

    p = actions.add_parser("compact", parents=[common], help="merge small files, drop orphans, apply retention")
    p.add_argument("--stream", action="append", help="only this stream (repeatable)")
    p.add_argument("--min-files", type=int, default=2, help="compact partitions with at least N files (default 2)")
    p.add_argument("--codes-retention-days", type=float, help="delete per-image codes older than N days")
    p.add_argument("--windows-retention-days", type=float, help="delete window aggregates older than N days")
    p.add_argument("--alarms-retention-days", type=float, help="delete alarms older than N days")
    p.set_defaults(func=_run_compact)
    return parser


def _baseline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline-from", help="baseline start (default: --from minus the range length)")
    p.add_argument("--baseline-to", help="baseline end (default: --from)")
    p.add_argument(
        "--baseline-slice",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="baseline metadata slice; with it and no --baseline-from/--to the baseline spans the same range",
    )
    p.add_argument("--baseline-store", help="read the baseline from this store (must hold the same concept space)")


# ------------------------------------------------------------------------------------------------ plumbing


def _wrap(fn):
    def run(args: argparse.Namespace) -> int:
        from monitor.errors import ConfigError, SpliceError

        try:
            return fn(args) or 0
        except SpliceError:
            raise
        except ValueError as exc:  # a value the analysis refused (bad slice, unknown concept): a usage error
            raise ConfigError(str(exc)) from exc

    return run


def _parse_slice(items: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} label=cat")
        out[key] = value
    return out


def _open(path: str):
    from monitor.history.store import HistoryStore

    return HistoryStore.open(path)


def _emit(rows: list[dict[str, Any]], fmt: str, columns: list[str], *, doc: dict[str, Any] | None = None) -> None:
    out = sys.stdout
    if fmt == "json":
        json.dump(doc if doc is not None else rows, out, default=_jsonable, allow_nan=False, indent=None)
        out.write("\n")
    elif fmt == "csv":
        w = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    else:
        cells = [[_cell(r.get(c)) for c in columns] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
        for row in cells:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def _jsonable(v: Any) -> Any:
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: turn them into null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _selections(args: argparse.Namespace):
    from monitor.history.analysis import Selection
    from monitor.history.store import parse_time
    from monitor.history.report import baseline_range

    where = _parse_slice(args.slice, "--slice")
    current = Selection.make(args.start, args.end, args.stream, where)
    if args.baseline_slice is not None and args.baseline_from is None and args.baseline_to is None:
        b_start, b_end = current.start, current.end  # two slices over the same range
    else:
        if current.start is None or current.end is None:
            raise ValueError("comparing time ranges needs --from and --to (or --baseline-slice for two slices)")
        b_start, b_end = baseline_range(
            current.start, current.end, parse_time(args.baseline_from), parse_time(args.baseline_to)
        )
    b_where = where if args.baseline_slice is None else _parse_slice(args.baseline_slice, "--baseline-slice")
    baseline = Selection.make(b_start, b_end, args.stream, b_where)
    return baseline, current


# ------------------------------------------------------------------------------------------------ actions

COMPARE_COLUMNS = [
    "direction",
    "concept",
    "baseline_prevalence",
    "current_prevalence",
    "cohens_h",
    "q_prevalence",
    "baseline_mean",
    "current_mean",
    "smd",
    "q_mean",
    "significant",
]


@_wrap
def _run_compare(args: argparse.Namespace) -> int:
    from monitor.history.analysis import compare

    store = _open(args.store)
    baseline_store = _open(args.baseline_store) if args.baseline_store else store
    baseline, current = _selections(args)
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    cmp = compare(baseline_store, baseline, current, current_store=store, alpha=args.alpha)
    doc = cmp.to_dict(args.top, by=args.by, significant_only=not args.all)
    rows = [{"direction": "rising", **r} for r in doc["rising"]] + [
        {"direction": "falling", **r} for r in doc["falling"]
    ]
    if args.format == "table":
        s = cmp.summary()
        print(
            f"baseline: {baseline.describe()} — {s['baseline']['n_images']:,} images\n"
            f"current:  {current.describe()} — {s['current']['n_images']:,} images\n"
            f"{s['multiple_testing']}"
        )
    _emit(rows, args.format, COMPARE_COLUMNS + ([] if args.format == "table" else ["p_prevalence", "p_mean", "z", "t"]),
          doc=_clean(doc))
    if args.plot:
        from monitor.history.report import plot_comparison

        plot_comparison(cmp, args.plot, k=min(args.top, 15), by=args.by, significant_only=not args.all)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


@_wrap
def _run_trend(args: argparse.Namespace) -> int:
    from monitor.history.analysis import trend

    store = _open(args.store)
    concepts = [int(c) if c.isdigit() and c not in store.concept_names else c for c in args.concepts]
    tr = trend(
        store,
        concepts,
        start=args.start,
        end=args.end,
        stream=args.stream,
        where=_parse_slice(args.slice, "--slice") or None,
        granularity=args.granularity,
    )
    rows = tr.rows()
    doc = {"granularity": tr.granularity, "concepts": tr.concepts, "selection": tr.selection.to_dict(), "rows": rows}
    _emit(
        rows,
        args.format,
        ["bucket_start_iso", "concept", "n_images", "presence", "prevalence", "mean_activation"],
        doc=_clean(doc),
    )
    if args.plot:
        from monitor.history.report import plot_trend

        plot_trend(tr, args.plot, metric=args.metric)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


@_wrap
def _run_cooccur(args: argparse.Namespace) -> int:
    from monitor.history.analysis import Selection, cooccur

    store = _open(args.store)
    sel = Selection.make(args.start, args.end, args.stream, _parse_slice(args.slice, "--slice"))
    co = cooccur(
        store,
        sel,
        concepts=args.concept,
        top_concepts=args.top_concepts,
        min_count=args.min_count,
        limit=args.limit,
        by=args.by,
    )
    doc = {"selection": sel.to_dict(), "n_images": co.n_images, "by": co.by, "pairs": co.pairs}
    _emit(
        co.pairs,
        args.format,
        ["concept_a", "concept_b", "count", "p_b_given_a", "lift", "npmi"],
        doc=_clean(doc),
    )
    return 0


@_wrap
def _run_report(args: argparse.Namespace) -> int:
    from monitor.history.report import render_report, write_report

    if not args.start or not args.end:
        raise ValueError("history report needs --from and --to")
    store = _open(args.store)
    if args.baseline_store:
        raise ValueError("--baseline-store is supported by `history compare`, not by `history report`")
    where = _parse_slice(args.slice, "--slice")
    b_where = None if args.baseline_slice is None else _parse_slice(args.baseline_slice, "--baseline-slice")
    b_from, b_to = args.baseline_from, args.baseline_to
    if b_where is not None and b_from is None and b_to is None:
        b_from, b_to = args.start, args.end
    text = render_report(
        store,
        start=args.start,
        end=args.end,
        baseline_start=b_from,
        baseline_end=b_to,
        stream=args.stream,
        where=where or None,
        baseline_where=b_where,
        top=args.top,
        granularity=args.granularity,
        alpha=args.alpha,
    )
    path = write_report(args.output, text)
    print(f"wrote {path}")
    return 0


@_wrap
def _run_compact(args: argparse.Namespace) -> int:
    store = _open(args.store)
    stats = store.compact(stream=args.stream, min_files=args.min_files, apply_retention=False)
    if any(v is not None for v in (args.codes_retention_days, args.windows_retention_days, args.alarms_retention_days)):
        removed = store.apply_retention(
            codes_days=args.codes_retention_days,
            windows_days=args.windows_retention_days,
            alarms_days=args.alarms_retention_days,
        )
        stats.update({f"{k}_partitions_expired": v for k, v in removed.items()})
    for key, value in stats.items():
        print(f"{key:<28} {value}")
    return 0


@_wrap
def _run_list(args: argparse.Namespace) -> int:
    from monitor.history.analysis import _iso

    info = _open(args.store).describe()
    rows = []
    for stream, s in info["streams"].items():
        rows.append(
            {
                "stream": stream,
                "windows": s["windows"],
                "images": s["images"],
                "first": _iso(s.get("first_window_start")),
                "last": _iso(s.get("last_window_end")),
                "codes_rows": s["codes_rows"],
                "alarms": s["alarms"],
                "files": sum(s[f"{t}_files"] for t in ("windows", "window_concepts", "alarms", "codes")),
                "bytes": sum(s[f"{t}_bytes"] for t in ("windows", "window_concepts", "alarms", "codes")),
            }
        )
    if args.format == "table":
        print(
            f"store {info['root']}  schema v{info['schema_version']}  concept space {info['concept_space']!r} "
            f"({info['n_concepts']} concepts)  checkpoints: {', '.join(info['checkpoints']) or 'none'}"
        )
    _emit(
        rows,
        args.format,
        ["stream", "windows", "images", "first", "last", "codes_rows", "alarms", "files", "bytes"],
        doc=_clean(info),
    )
    return 0
