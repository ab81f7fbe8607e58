"""``splice-monitor bench WHAT [--json]``: reproducible benchmarks whose output keys are documented in
docs/benchmarks.md. Each target lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> dict``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

TARGETS: dict[str, str] = {
    "solver": "workers.benchmarks.solver",
    "drift": "workers.benchmarks.drift",
    "oracle": "workers.benchmarks.oracle",
    "scrape": "workers.benchmarks.scrape",
    "history": "workers.benchmarks.history",
    "pipeline": "workers.benchmarks.pipeline",
    "gpu": "workers.benchmarks.gpu",
}


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser("bench", help="run a benchmark and print its figures")
    targets = parser.add_subparsers(dest="target", metavar="WHAT", required=True)
    for name, module_name in TARGETS.items():
        module = importlib.import_module(module_name)
        p = targets.add_parser(name, help=_summary(module))
        _add_target_arguments(p, module)
    return parser


def module_main(module_name: str, argv: list[str] | None = None) -> int:
    """``python3 -m MODULE [--json] ...``: one target run without the ``splice-monitor`` command (the GPU script runs
    where the project is not installed); the same options and output as ``splice-monitor bench``."""
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python3 -m {module_name}", description=_summary(module))
    _add_target_arguments(parser, module)
    args = parser.parse_args(argv)
    return args.func(args)


def _summary(module) -> str | None:
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None


def _add_target_arguments(parser: argparse.ArgumentParser, module) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    module.add_arguments(parser)
    parser.set_defaults(func=_runner(module))


def _runner(module):
    def run(args: argparse.Namespace) -> int:
        result = module.run(args)
        if args.json:
            json.dump(result, sys.stdout, default=_jsonable)
            sys.stdout.write("\n")
        else:
            width = max((len(k) for k in result), default=0)
            for key, value in result.items():
                print(f"{key:<{width}}  {value}")
        return 0

    return run


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
