"""The command line exposes every subcommand the design names, and --help stays cheap (no torch or ray import)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monitor.cli import main as cli

DESIGN_COMMANDS = {"decompose", "vocab", "calibrate", "run", "backfill", "history", "dashboards", "bench", "demo"}
BENCH_TARGETS = {"solver", "drift", "oracle", "scrape", "history", "pipeline", "gpu"}


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


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_no_parser_at_any_level_accepts_abbreviated_options():
    parsers = list(_all_parsers(cli.build_parser()))
    assert len(parsers) > 20  # the walk reached the nested actions (history cooccur, vocab show, bench solver, ...)
    assert [p.prog for p in parsers if p.allow_abbrev] == []


def test_cooccur_top_is_an_error_not_top_concepts(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(["history", "cooccur", "--store", str(tmp_path), "--top", "8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --top 8" in err


def test_warnings_print_as_one_line_without_source_paths(capsys, tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("cat\ndog\ncat\n", encoding="utf-8")
    assert cli.main(["vocab", "show", "--vocab", str(path), "--head", "1"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"warning: vocabulary {path}: 1 duplicate concept line(s) dropped: 'cat' (the first of each is "
                     "kept); delete the repeated lines to silence this"]


def test_configuration_errors_are_one_line_with_exit_2(capsys):
    assert cli.main(["vocab", "show", "--vocab", "laion", "--vocab-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["splice-monitor vocab: vocab size for 'laion' must be an integer in [1, 37445] (the file's line "
                   "count), got 0"]
