"""How ``run``, ``backfill`` and ``demo`` talk to the user: start-up steps, the periodic status line and progress on
stderr (none with ``--quiet``), alarms on stdout as they fire, and the summary at the end as text or, with
``--json``, as one JSON object on stdout that also holds the alarms and notices."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["Console", "print_alarm", "durability_line"]


def print_alarm(alarm) -> None:
    if alarm.state == "resolved":
        print(f"resolved: {alarm.describe()}", flush=True)
    else:
        # p_value is exp(-evidence) of the sequential test: an uncorrected per-test bound, not a calibrated p-value
        print(f"ALARM {alarm.describe()}  (effect {alarm.effect_size:.3g}, p<={alarm.p_value:.2g}, fired at item "
              f"{alarm.item_offset}, event time {alarm.event_time:.3f})", flush=True)


class Console:
    """The pipeline commands' output, configured once from the resolved settings."""

    def __init__(self, command: str, *, quiet: bool = False, json_output: bool = False,
                 log_level: str = "warning") -> None:
        self.command = command
        self.quiet = quiet
        self.json = json_output
        self.t0 = time.perf_counter()
        _configure_logging(log_level)

    def say(self, message: str) -> None:
        """A start-up step or a note on stderr, with the seconds since the command started."""
        if not self.quiet:
            print(f"{self.command}: {message} ({time.perf_counter() - self.t0:.0f} s)", file=sys.stderr, flush=True)

    def phase(self, message: str) -> None:
        self.say(message + "…")

    def status(self, status) -> None:
        if not self.quiet:
            print(f"{self.command}: {status.format()}", file=sys.stderr, flush=True)

    def started(self, info: dict) -> None:
        addrs = [a for a in info.get("metrics_addresses") or [info.get("metrics_address")] if a]
        where = ", metrics on " + ", ".join(f"http://{a[0]}:{a[1]}/metrics" for a in addrs) if addrs else ""
        if (info.get("aggregators") or 1) > 1:
            where = f", {info['aggregators']} aggregators" + where
        if not self.quiet:
            print(f"running: {info['workers']} worker(s), {info['gpus_per_worker']:g} GPU each, encoder "
                  f"{info['encoder']}, {info['n_concepts']:,} concepts{where} "
                  f"({time.perf_counter() - self.t0:.0f} s after start)", file=sys.stderr, flush=True)
            mean = info.get("mean") or ""
            if mean.startswith("SpLiCE's published"):
                # the embeddings are centred with a mean measured on someone else's images: say so, and how to
                # use one measured on this camera's frames instead
                print(f"mean: {mean}; `splice-monitor calibrate` measures one on your own images (pass it with "
                      f"--mean)", file=sys.stderr, flush=True)
            print(f"{self.command}: {durability_line(info)}", file=sys.stderr, flush=True)
            job = info.get("job")
            if job and info.get("resumed_done") and info.get("resumed_from") is not None:
                print(f"{self.command}: {job} is already complete (pass --restart to run it again)", file=sys.stderr,
                      flush=True)
            elif job and info.get("resumed_items"):
                where = info.get("resumed_from")
                print(f"{self.command}: resuming {job} from its checkpoint ({info['resumed_items']} items counted"
                      f"{', source position ' + str(where) if where is not None else ''})", file=sys.stderr,
                      flush=True)

    def alarm(self, alarm) -> None:
        if not self.json:  # with --json the alarms are part of the summary object
            print_alarm(alarm)

    def exit_code(self, summary) -> int:
        """0, or 130 when Ctrl-C stopped the run (after it committed what was in flight and flushed)."""
        if summary.signal == "SIGINT":
            print(f"splice-monitor {self.command}: interrupted (Ctrl-C); what was in flight was committed and the "
                  f"windows flushed", file=sys.stderr, flush=True)
            return 130
        return 0

    def summary(self, summary, **extra: Any) -> None:
        if self.json:
            print(json.dumps({"command": self.command, **summary.as_dict(), **extra}, default=str))
        else:
            print(summary.format())


def durability_line(info: dict) -> str:
    """What a crash can cost this run, said once at start-up (docs/pipeline.md, "Acknowledge only what is
    durable")."""
    job = info.get("job")
    if job:
        return (f"checkpointed as job {job} (every {info.get('checkpoint_every_s', 30):g} s; only what a checkpoint "
                f"holds is acknowledged, so a crash loses nothing and the same command resumes)")
    why, fix = ("", "") if info.get("history") else (" (no --history)", "; add --history DIR to make it resumable")
    return (f"not checkpointed{why}: each batch is acknowledged once committed and the windows live in memory, so "
            f"an aggregator or driver crash loses what the open windows held{fix}")


def _configure_logging(level: str) -> None:
    """splice-monitor's own loggers (monitor.*, workers.*) on stderr at ``level``; other libraries keep theirs.
    Records still propagate, so an application or test that captures logging sees them too."""
    for name in ("monitor", "workers"):
        logger = logging.getLogger(name)
        logger.setLevel(getattr(logging, level.upper()))
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_splice_console", False)]
        handler = logging.StreamHandler(sys.stderr)  # the stderr of now (tests swap it per call)
        handler.setFormatter(logging.Formatter("splice-monitor %(levelname)s: %(message)s"))
        handler._splice_console = True
        logger.addHandler(handler)
