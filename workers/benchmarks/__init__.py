"""Benchmark targets of ``splice-monitor bench``; each module exposes ``add_arguments(parser)`` and
``run(args) -> dict``. Shared here: how a run names the machine it ran on."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux), so recorded figures say what they ran on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
