"""The command line exposes every subcommand the design names, and --help stays cheap (no torch or ray import)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monitor.cli import main as cli

DESIGN_COMMANDS = {"decompose", "vocab", "calibrate", "run", "backfill", "history", "dashboards", "bench", "demo"}
BENCH_TARGETS = {"solver", "drift", "scrape", "history", "pipeline"}


def _choices(parser):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


def test_every_design_subcommand_and_bench_target_is_registered():
    commands = _choices(cli.build_parser())
    assert DESIGN_COMMANDS <= set(commands)
    assert BENCH_TARGETS <= set(_choices(commands["bench"]))


def test_help_does_not_import_torch_or_ray():
    code = ("import sys; from monitor.cli import main as cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'ray', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_unknown_subcommand_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2
    assert "frobnicate" in capsys.readouterr().err
