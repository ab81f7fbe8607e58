"""The ``splice-monitor`` command line: one parser, one error handler, subcommands found through entry points.

Every subcommand is declared in one place, the ``splice_monitor.commands`` entry-point group of pyproject.toml, as
a module exposing ``register(subparsers) -> argparse.ArgumentParser`` (which sets ``func``). That keeps the import
graph one-way: this library names neither ``workers`` (run, backfill, demo, bench) nor ``dashboards``; they plug in.
Subcommand modules keep heavy imports (torch, ray, open_clip) inside their ``run`` function so that ``--help`` and
argument errors stay instant.

Exit codes: 0 success, 1 a run failed (:class:`~monitor.errors.PipelineError`, a failed push), 2 a usage or
configuration error (:class:`~monitor.errors.ConfigError`, :class:`~monitor.errors.NoDataError`), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from importlib import import_module
from importlib.metadata import entry_points

from monitor.errors import SpliceError
from monitor.uris import redact_text

COMMAND_GROUP = "splice_monitor.commands"


def command_modules() -> dict[str, str]:
    """name -> module path of every registered subcommand, in the order pyproject.toml declares them."""
    found = {ep.name: ep.value for ep in entry_points(group=COMMAND_GROUP)}
    if not found:
        raise SystemExit(
            "splice-monitor: no subcommands are registered; the package metadata is missing. "
            "Install the package (pip install -e .) rather than running it from a source tree."
        )
    return found


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that never accepts an abbreviated option (``--top`` silently meaning ``--top-concepts``).
    ``add_subparsers`` builds subcommand parsers with the parent's class, so every level inherits this."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from monitor import __version__

    parser = Parser(
        prog="splice-monitor",
        description="Monitor distribution shift in image and caption streams as sparse word-concept mixtures.",
    )
    parser.add_argument("--version", action="version", version=f"splice-monitor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in command_modules().values():
        import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.func, args, prog=f"splice-monitor {args.command}")


@contextlib.contextmanager
def one_line_warnings():
    """Show each warning as one "warning: ..." line on stderr, without Python's file:line and source echo: the
    messages say what happened, to which input, and what to do."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")

        def show(message, category, filename, lineno, file=None, line=None):
            print(f"warning: {message}", file=sys.stderr if file is None else file)

        warnings.showwarning = show
        yield


def run_command(func, args: argparse.Namespace, *, prog: str) -> int:
    """Run one subcommand and turn its failure into one line on stderr plus the documented exit code."""
    try:
        with one_line_warnings():
            rc = func(args)
    except SpliceError as exc:
        print(f"{prog}: {redact_text(str(exc))}", file=sys.stderr)  # messages may quote a URI with a password
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
