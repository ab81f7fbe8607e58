"""``splice-monitor backfill``: decompose an archive (e.g. a Parquet of images or captions with timestamps) into the
history store in batch mode on local Ray, with a progress bar; interrupted runs resume from their checkpoint."""

from __future__ import annotations

import argparse
import sys

from workers.cli.options import add_model_arguments, add_ray_arguments, add_window_arguments, pipeline_config


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("backfill", help="decompose an archive into the history store (resumable)",
                       description=__doc__)
    p.add_argument("--source", required=True, help="finite source URI: a Parquet/Arrow file or directory, or a "
                                                   "directory of images (see docs/pipeline.md)")
    p.add_argument("--history", required=True, help="history store directory")
    p.add_argument("--job-id", default=None, help="checkpoint name (default: derived from the source URI)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--kind", choices=("image", "text"), default=None)
    p.add_argument("--stream", default=None)
    p.add_argument("--write-codes", action="store_true", help="store every item's sparse code too")
    p.add_argument("--dead-letter", default=None, help="dead-letter sink URI (see run --help)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--pushgateway", default=None,
                   help="at the end push the run's completion metrics (last success time, duration, counts; never "
                        "alarm state) to this Prometheus Pushgateway (http://host:9091), job splice-backfill, grouping "
                        "label run=<job id>")
    add_model_arguments(p)
    add_window_arguments(p, window="1h")
    add_ray_arguments(p, batch_size=128)
    p.set_defaults(func=run)
    return p


def default_job_id(source: str) -> str:
    import hashlib
    import re

    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])[:40] or "src"
    return f"backfill-{tail.strip('-.') or 'src'}-{hashlib.sha256(source.encode()).hexdigest()[:10]}"


def run(args: argparse.Namespace) -> int:
    from monitor.errors import ConfigError
    from workers.cli.run import print_alarm, report_push
    from workers.driver import run_pipeline
    from workers.sources import open_source

    probe = open_source(args.source, kind=args.kind, stream=args.stream)
    probe.close()
    if not probe.finite:
        raise ConfigError(f"backfill needs a finite source (a Parquet file, a directory without follow=1), "
                          f"got {args.source!r}")
    config = pipeline_config(args, checkpoint_job=args.job_id or default_job_id(args.source),
                             restart=args.restart, push_job="splice-backfill")
    total = getattr(probe, "total", None)
    bar = None
    offset = 0

    def progress(done: int, dead: int) -> None:
        if bar is not None:
            bar.n = done + dead + offset
            bar.refresh()

    def started(info: dict) -> None:
        nonlocal bar, offset
        offset = int(info.get("resumed_items", 0))
        if info.get("resumed_done"):
            print(f"backfill: {config.checkpoint_job} is already complete (pass --restart to run it again)",
                  file=sys.stderr)
        elif info.get("resumed_from") is not None:
            print(f"backfill: resuming {config.checkpoint_job} after {info['resumed_from']}", file=sys.stderr)
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=offset, unit="item", desc="backfill", file=sys.stderr)

    try:
        summary = run_pipeline(config, handle_signals=True, on_alarm=print_alarm, on_progress=progress,
                               on_started=started)
    finally:
        if bar is not None:
            bar.close()
    print(summary.format())
    if summary.stopped_by == "signal":
        print(f"backfill interrupted; run the same command again to resume ({config.checkpoint_job})",
              file=sys.stderr)
    return report_push(summary, "backfill")
