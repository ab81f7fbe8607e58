"""``splice-monitor run`` on a finite source: the completion metrics are pushed when the source ends."""

from __future__ import annotations

from monitor.cli.main import main as cli_main
from tests.workers.helpers import caption_parquet, pushed_samples


def test_run_on_a_finite_source_pushes_its_final_counts_under_its_job_id(ray_local, test_vocab, cache_dir, tmp_path,
                                                                         pushgateway, capsys):
    uri, ids = caption_parquet(tmp_path / "caps.parquet", 90, seed=3)
    rc = cli_main(["run", "--source", uri, "--metrics-port", "-1", "--pushgateway", pushgateway,
                   "--job-id", "nightly", "--workers", "1", "--batch-size", "45", "--model", "minilm",
                   "--vocab", test_vocab, "--mean", "vocab", "--cache-dir", cache_dir, "--window", "45",
                   "--reference-images", "45"])
    assert rc == 0
    assert f"images counted: {len(ids)}" in capsys.readouterr().out
    assert sum(pushed_samples(pushgateway, "splice_batch_images", job="splice-run", run="nightly")) == len(ids)
    assert pushed_samples(pushgateway, "splice_batch_last_success_timestamp_seconds", job="splice-run", run="nightly")
    # completion metrics only: no monitor state that would keep alerts firing after the job ended
    for name in ("splice_images_total", "splice_concept_alarm_firing", "splice_alarms_firing"):
        assert not pushed_samples(pushgateway, name, job="splice-run"), name


def test_max_streams_flag_reaches_the_monitor_options_and_is_checked(capsys):
    import argparse

    import pytest

    from monitor.errors import ConfigError
    from workers.cli.run import build_config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["run", "--source", "/tmp/x.parquet", "--max-streams", "500"])
    assert build_config(args).monitor.max_streams == 500  # typed options (workers/config.py)
    with pytest.raises(ConfigError, match="--max-streams must be >= 1, got 0"):
        build_config(parser.parse_args(["run", "--source", "/tmp/x.parquet", "--max-streams", "0"]))
