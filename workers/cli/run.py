"""``splice-monitor run``: the streaming job. Reads a source, decomposes on Ray workers, aggregates windows, exports
metrics, writes history and dead letters; a finite source runs to its end, an endless one until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from workers.cli.options import add_model_arguments, add_ray_arguments, add_window_arguments, pipeline_config


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run the streaming monitor on a source (dir, Parquet/Arrow, Redis Streams)",
                       description=__doc__)
    p.add_argument("--source", required=True,
                   help="source URI: dir:///path?glob=*.jpg&follow=1 (or a plain path), "
                        "parquet:///file.parquet?image_column=image&timestamp_column=ts, "
                        "redis://host:6379/0?stream=frames&group=splice (see docs/pipeline.md)")
    p.add_argument("--kind", choices=("image", "text"), default=None,
                   help="payload kind when the source cannot tell (default: from the source)")
    p.add_argument("--stream", default=None, help="stream name for items the source does not name")
    p.add_argument("--metrics-port", type=int, default=9400,
                   help="serve Prometheus metrics on this port (0: a free port; -1: off; default %(default)s)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address the metrics endpoint binds (default %(default)s: this machine only; in a cluster "
                        "0.0.0.0 or the pod IP, with a NetworkPolicy deciding who may scrape)")
    p.add_argument("--history", default=None, help="history store directory (Parquet) for windows and alarms")
    p.add_argument("--write-codes", action="store_true", help="also store every item's sparse code in history")
    p.add_argument("--dead-letter", default=None,
                   help="dead-letter sink: redis://host:6379/0?stream=KEY or parquet:///dir (default: count only)")
    p.add_argument("--pushgateway", default=None,
                   help="push the final metrics to this Prometheus Pushgateway (http://host:9091) when a finite "
                        "source ends (job splice-run, grouping label run=--job-id): completion time, duration and "
                        "counts only, never alarm state")
    p.add_argument("--checkpoint-every", type=float, default=30.0,
                   help="with --history and --job-id: seconds between checkpoints; only what a checkpoint holds is "
                        "acknowledged at the source (default %(default)s)")
    p.add_argument("--job-id", default=None,
                   help="the run's name: the Pushgateway grouping label run=... (default: derived from --source)")
    add_model_arguments(p)
    add_window_arguments(p)
    add_ray_arguments(p)
    p.set_defaults(func=run)
    return p


def build_config(args: argparse.Namespace):
    # with a history store and a job id the run checkpoints and acknowledges only what a checkpoint holds, so a rerun
    # after a crash resumes where the last checkpoint ended (docs/pipeline.md, "Acknowledge only what is durable")
    return pipeline_config(args, metrics_host=args.metrics_host, push_job="splice-run", push_run_id=args.job_id,
                           checkpoint_job=args.job_id if args.history and args.job_id else None,
                           checkpoint_every_s=args.checkpoint_every)


def print_alarm(alarm) -> None:
    if alarm.state == "resolved":
        print(f"resolved: {alarm.describe()}", flush=True)
    else:
        # p_value is exp(-evidence) of the sequential test: an uncorrected per-test bound, not a calibrated p-value
        print(f"ALARM {alarm.describe()}  (effect {alarm.effect_size:.3g}, p<={alarm.p_value:.2g}, fired at item "
              f"{alarm.item_offset}, event time {alarm.event_time:.3f})", flush=True)


def run(args: argparse.Namespace) -> int:
    from workers.driver import run_pipeline

    config = build_config(args)

    def started(info: dict) -> None:
        addr = info.get("metrics_address")
        where = f", metrics on http://{addr[0]}:{addr[1]}/metrics" if addr else ""
        print(f"running: {info['workers']} worker(s), {info['gpus_per_worker']:g} GPU each, encoder "
              f"{info['encoder']}, {info['n_concepts']} concepts{where}", file=sys.stderr, flush=True)

    summary = run_pipeline(config, handle_signals=True, on_alarm=print_alarm, on_started=started)
    print(summary.format())
    return report_push(summary, "run")


def report_push(summary, command: str) -> int:
    """Exit status after a run: 1 when the final push to the Pushgateway failed (the run itself completed)."""
    if summary.push_error:
        print(f"splice-monitor {command}: pushing the final metrics failed: {summary.push_error}", file=sys.stderr)
        return 1
    return 0
