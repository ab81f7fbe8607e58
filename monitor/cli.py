"""The ``splice-monitor`` command line: one parser, one module per subcommand.

Subcommand modules keep heavy imports (torch, ray, open_clip) inside their ``run`` function so that ``--help`` and
argument errors stay instant. ``run``, ``backfill`` and ``demo`` are handed to the Ray shell in ``workers``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module exposing ``register(subparsers) -> argparse.ArgumentParser`` (which sets ``func``)
COMMANDS: dict[str, str] = {
    "decompose": "monitor.commands.decompose",
    "vocab": "monitor.commands.vocab",
    "calibrate": "monitor.commands.calibrate",
    "history": "monitor.commands.history",
    "dashboards": "monitor.commands.dashboards",
    "bench": "monitor.commands.bench",
    "run": "workers.commands.run",
    "backfill": "workers.commands.backfill",
    "demo": "workers.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splice-monitor",
        description="Monitor distribution shift in image and caption streams as sparse word-concept mixtures.",
    )
    from monitor import __version__

    parser.add_argument("--version", action="version", version=f"splice-monitor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
