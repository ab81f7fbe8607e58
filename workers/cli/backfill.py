"""``splice-monitor backfill``: decompose an archive (e.g. a Parquet of images or captions with timestamps) into the
history store in batch mode on local Ray, with a progress bar; interrupted runs resume from their checkpoint.

Settings come from defaults, a ``--config`` file, ``SPLICE_*`` environment variables and flags, in that order of
precedence (``splice-monitor config show --for backfill``)."""

from __future__ import annotations

import argparse
import sys

from workers.cli.settings import add_settings_arguments


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("backfill", help="decompose an archive into the history store (resumable)",
                       description=__doc__, allow_abbrev=False)
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true",
                   help="print the summary (with the alarms and notices) as one JSON object on stdout")
    add_settings_arguments(p, "backfill")
    p.set_defaults(func=run)
    return p


def default_job_id(source: str) -> str:
    import hashlib
    import re

    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])[:40] or "src"
    return f"backfill-{tail.strip('-.') or 'src'}-{hashlib.sha256(source.encode()).hexdigest()[:10]}"


def run(args: argparse.Namespace) -> int:
    from monitor.errors import ConfigError
    from workers.cli.output import Console
    from workers.cli.run import report_push
    from workers.cli.settings import env_name, resolve
    from workers.driver import Pipeline
    from workers.sources import open_source

    resolved = resolve("backfill", args)
    s = resolved.settings
    if not s.source:
        raise ConfigError(f"backfill needs a source: --source URI (a Parquet/Arrow file or directory, or a directory "
                          f"of images), 'source:' in the --config file, or {env_name('source')}")
    if not s.history:
        raise ConfigError(f"backfill needs a history store: --history DIR, 'history:' in the --config file, or "
                          f"{env_name('history')}")
    console = Console("backfill", quiet=s.quiet, json_output=args.json, log_level=s.log_level)
    probe = open_source(s.source, kind=s.kind, stream=s.stream)
    probe.close()
    if not probe.finite:
        raise ConfigError(f"backfill needs a finite source (a Parquet file, a directory without follow=1), "
                          f"got {s.source!r}")
    job = s.job_id or default_job_id(s.source)
    config = resolved.pipeline_config(checkpoint_job=job, restart=args.restart, push_job="splice-backfill",
                                      checkpoint_every_s=s.checkpoint_every)
    total = getattr(probe, "total", None)
    bar = None
    offset = 0

    def progress(done: int, dead: int) -> None:
        if bar is not None:
            bar.n = done + dead + offset
            bar.refresh()

    def started(info: dict) -> None:
        nonlocal bar, offset
        console.started(info)
        offset = int(info.get("resumed_items", 0))
        if not args.no_progress and not s.quiet:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=offset, unit="item", desc="backfill", file=sys.stderr)

    try:
        summary = Pipeline(config, on_alarm=console.alarm, on_progress=progress, on_started=started,
                           on_phase=console.phase).run(handle_signals=True)
    finally:
        if bar is not None:
            bar.close()
    console.summary(summary, job_id=job)
    if summary.stopped_by == "signal":
        print(f"backfill interrupted; run the same command again to resume ({job})", file=sys.stderr)
    return report_push(summary, "backfill") or console.exit_code(summary)
