"""One configuration for run/backfill/demo: a YAML or TOML file, SPLICE_* environment variables and flags resolve in
that order of precedence, each value with its source; bad values are one-line errors naming the setting and where
it came from. No Ray: the settings are resolved and printed without starting anything."""

from __future__ import annotations

import argparse
import json

import pytest

from monitor.cli.main import run_command
from monitor.errors import ConfigError
from workers.cli import config as config_command
from workers.cli.settings import (_DEFAULT_ERT, _DEFAULT_MAX_STREAMS, Settings, add_settings_arguments, knobs,
                                  resolve)


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"splice-monitor {command}", allow_abbrev=False)
    add_settings_arguments(p, command)
    return p


def _cli(argv: list[str]) -> argparse.Namespace:
    """Parse as `splice-monitor ARGV` would, with the config command registered from its module (the installed
    entry points may predate it)."""
    p = argparse.ArgumentParser(prog="splice-monitor", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    config_command.register(sub)
    return p.parse_args(argv)


def test_yaml_file_then_env_then_flag_resolve_in_that_order_each_with_its_source(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "splice.yaml"
    cfg.write_text("source: parquet:///data/captions.parquet\n"
                   "l1: 0.3\n"
                   "window: 500\n"
                   "min-prevalence-change: 0.05\n"
                   "workers: 3\n"
                   "run:\n"
                   "  workers: 4\n")
    monkeypatch.setenv("SPLICE_L1", "0.35")  # env beats the file
    monkeypatch.setenv("SPLICE_WINDOW", "5m")
    monkeypatch.setenv("SPLICE_MONITOR_TEST_CACHE", "/elsewhere")  # not a setting: ignored
    args = _cli(["config", "show", "--config", str(cfg), "--l1", "0.4", "--json"])  # the flag beats env
    assert run_command(args.func, args, prog="splice-monitor config") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["l1"] == {"value": 0.4, "source": "flag --l1"}
    assert shown["window"] == {"value": "5m", "source": "env SPLICE_WINDOW"}
    assert shown["min_prevalence_change"] == {"value": 0.05, "source": f"file {cfg}"}
    assert shown["workers"] == {"value": 4, "source": f"file {cfg} [run]"}  # the command's section wins
    assert shown["source"]["value"] == "parquet:///data/captions.parquet"
    assert shown["ert"] == {"value": 1_000_000.0, "source": "default"}

    # the same layers give the typed pipeline configuration the actors receive
    resolved = resolve("run", _parser("run").parse_args(["--config", str(cfg), "--l1", "0.4"]))
    config = resolved.pipeline_config()
    assert config.worker.l1 == 0.4 and config.workers == 4
    assert (config.monitor.window.kind, config.monitor.window.size) == ("time", 300.0)
    assert config.monitor.drift.min_prevalence_change == 0.05


def test_toml_file_and_the_text_table(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SPLICE_L1", raising=False)
    cfg = tmp_path / "splice.toml"
    cfg.write_text('l1 = 0.5\nert = 200\n[demo]\nreference_images = 600\n')
    args = _cli(["config", "show", "--for", "demo", "--config", str(cfg), "--workers", "1"])
    assert run_command(args.func, args, prog="splice-monitor config") == 0
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["l1"] == ["0.5", f"file {cfg}"]
    assert rows["ert"] == ["200.0", f"file {cfg}"]
    assert rows["reference_images"] == ["600", f"file {cfg} [demo]"]
    assert rows["workers"] == ["1", "flag --workers"]
    assert rows["min_prevalence_change"] == ["0.05", "default (demo)"]  # the demo's own defaults
    assert "source" not in rows  # the demo makes its own stream


def test_a_bad_value_names_the_setting_its_value_and_where_it_came_from(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPLICE_WORKERS", "two")
    args = _cli(["config", "show"])
    assert run_command(args.func, args, prog="splice-monitor config") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("splice-monitor config: --workers = 'two' (from env SPLICE_WORKERS): Input should be a "
                          "valid integer")
    assert "\n" not in err

    monkeypatch.delenv("SPLICE_WORKERS")
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("min_prevalence_chnage: 0.05\n")
    with pytest.raises(ConfigError, match="unknown setting 'min_prevalence_chnage'; did you mean "
                                          "min_prevalence_change"):
        resolve("run", _parser("run").parse_args(["--config", str(cfg)]))
    with pytest.raises(ConfigError, match="^--l1 must be >= 0, got -1.0$"):
        resolve("run", _parser("run").parse_args(["--l1", "-1"]))
    with pytest.raises(ConfigError, match=r"^--min-prevalence-change must be < 1, got '2' \(from env "
                                          r"SPLICE_MIN_PREVALENCE_CHANGE\)$"):
        resolve("run", _parser("run").parse_args([]), environ={"SPLICE_MIN_PREVALENCE_CHANGE": "2"})
    with pytest.raises(ConfigError, match="run needs a source"):
        resolve("run", _parser("run").parse_args([])).pipeline_config()
    with pytest.raises(ConfigError, match="--metrics-port is not a setting of backfill"):
        resolve("backfill", argparse.Namespace(metrics_port=1))


def test_every_flag_shows_its_default_and_its_environment_variable():
    text = _parser("run").format_help().split("options:", 1)[1]  # past the usage line
    for flag, default in (("--ert", "1000000.0"), ("--window-view", "1"), ("--cpus-per-worker", "1.0"),
                          ("--min-prevalence-change", "0.0"), ("--max-pixels", "89,478,485")):
        block = text.split(f"\n  {flag} ", 1)[1].split("\n  --", 1)[0]
        assert f"(default: {default};" in " ".join(block.split()), flag
    assert "env SPLICE_MIN_PREVALENCE_CHANGE" in " ".join(text.split())


def test_the_ert_and_stream_limit_defaults_are_the_librarys_own():
    from monitor.drift import DriftConfig
    from monitor.drift.monitor import DEFAULT_MAX_STREAMS

    assert _DEFAULT_ERT == DriftConfig().ert == Settings().ert
    assert _DEFAULT_MAX_STREAMS == DEFAULT_MAX_STREAMS == Settings().max_streams


def test_every_knob_the_docs_name_is_a_flag_of_run():
    # the knobs docs/drift.md and docs/pipeline.md tell users to set, and the demo's tuned ones
    for name in ("min_prevalence_change", "mean", "l1", "ert", "window_view", "reference_images", "cpus_per_worker",
                 "max_streams", "metrics_host"):
        assert name in knobs("run"), name


def test_aggregators_and_worker_wait_come_from_env_file_and_flag_into_the_pipeline_config(tmp_path):
    cfg = tmp_path / "splice.yaml"
    cfg.write_text("source: parquet:///data/captions.parquet\naggregators: 3\n")
    from_file = resolve("run", _parser("run").parse_args(["--config", str(cfg)])).pipeline_config()
    assert from_file.aggregators == 3 and from_file.worker_wait_s == 300.0
    from_env = resolve("run", _parser("run").parse_args(["--config", str(cfg), "--worker-wait", "20"]),
                       environ={"SPLICE_AGGREGATORS": "2"}).pipeline_config()
    assert from_env.aggregators == 2 and from_env.worker_wait_s == 20.0
    flag = _parser("run").parse_args(["--source", "x.parquet", "--aggregators", "4"])
    assert resolve("run", flag, environ={"SPLICE_AGGREGATORS": "2"}).pipeline_config().aggregators == 4
    with pytest.raises(ConfigError, match="aggregators"):
        resolve("run", _parser("run").parse_args(["--source", "x.parquet", "--aggregators", "0"])).pipeline_config()
