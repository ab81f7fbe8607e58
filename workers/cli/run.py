"""``splice-monitor run``: the streaming job. Reads a source, decomposes on Ray workers, aggregates windows, exports
metrics, writes history and dead letters; a finite source runs to its end, an endless one until SIGTERM (or Ctrl-C).

Settings come from defaults, a ``--config`` file, ``SPLICE_*`` environment variables and flags, in that order of
precedence (``splice-monitor config show`` prints them with their sources)."""

from __future__ import annotations

import argparse
import sys

from workers.cli.settings import add_settings_arguments


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run the streaming monitor on a source (dir, Parquet/Arrow, Redis Streams)",
                       description=__doc__, allow_abbrev=False)
    p.add_argument("--restart", action="store_true",
                   help="with --history: ignore the job's checkpoint and start over (the windows it holds are dropped)")
    p.add_argument("--json", action="store_true",
                   help="print the summary (with the alarms and notices) as one JSON object on stdout")
    add_settings_arguments(p, "run")
    p.set_defaults(func=run)
    return p


def build_config(args: argparse.Namespace, resolved=None):
    """The run's PipelineConfig from its parsed flags (and the file and environment they sit on)."""
    from dataclasses import replace

    from workers.checkpoint import derive_job_id
    from workers.cli.settings import resolve

    resolved = resolved or resolve("run", args)
    s = resolved.settings
    config = resolved.pipeline_config(push_job="splice-run", push_run_id=s.job_id,
                                      restart=bool(getattr(args, "restart", False)),
                                      checkpoint_every_s=s.checkpoint_every)
    if not config.history:
        return config
    # with a history store the run checkpoints and acknowledges only what a checkpoint holds, so a rerun after a crash
    # resumes where the last checkpoint ended (docs/pipeline.md, "Acknowledge only what is durable"); without
    # --job-id the checkpoint is named after the source and the store, so the same command finds it again
    return replace(config, checkpoint_job=s.job_id or derive_job_id(config.source, config.history,
                                                                     stream=config.stream, kind=config.kind))


def run(args: argparse.Namespace) -> int:
    from workers.cli.output import Console
    from workers.cli.settings import resolve
    from workers.driver import Pipeline

    resolved = resolve("run", args)
    s = resolved.settings
    console = Console("run", quiet=s.quiet, json_output=args.json, log_level=s.log_level)
    config = build_config(args, resolved)
    pipeline = Pipeline(config, on_alarm=console.alarm, on_started=console.started, on_phase=console.phase,
                        on_status=console.status, status_every_s=s.status_every)
    summary = pipeline.run(handle_signals=True)
    console.summary(summary)
    return report_push(summary, "run") or console.exit_code(summary)


def report_push(summary, command: str) -> int:
    """Exit status after a run: 1 when the final push to the Pushgateway failed (the run itself completed)."""
    if summary.push_error:
        print(f"splice-monitor {command}: pushing the final metrics failed: {summary.push_error}", file=sys.stderr)
        return 1
    return 0
