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


def _run_config(*argv: str):
    import argparse

    from workers.cli.run import build_config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return build_config(parser.parse_args(["run", *argv]))


def test_every_run_with_a_history_store_is_checkpointed_under_a_job_id_stable_across_reruns(tmp_path, monkeypatch):
    """Issue 11: a plain ``run --history`` acknowledged right after commit, so a crash lost acknowledged items. Now
    it is checkpoint-gated under a job id derived from the input and the store; ``--job-id`` still names it."""
    monkeypatch.chdir(tmp_path)
    redis = "redis://:secret@127.0.0.1:6390/0?stream=frames&group=splice"
    job = _run_config("--source", redis, "--history", "h").checkpoint_job
    assert job and job.startswith("run-frames-")
    # the same command again (a rerun after a crash), another password, another consumer name, an absolute store
    assert _run_config("--source", redis.replace("secret", "rotated") + "&consumer=pod-2",
                       "--history", str(tmp_path / "h")).checkpoint_job == job
    # another group, stream, database or store is another job
    others = {_run_config("--source", redis.replace("group=splice", "group=other"), "--history", "h").checkpoint_job,
              _run_config("--source", redis.replace("frames", "frames2"), "--history", "h").checkpoint_job,
              _run_config("--source", redis.replace("/0?", "/1?"), "--history", "h").checkpoint_job,
              _run_config("--source", redis, "--history", "h2").checkpoint_job}
    assert len(others) == 4 and job not in others
    parquet = _run_config("--source", "captions.parquet", "--history", "h").checkpoint_job
    assert parquet.startswith("run-captions.parquet-")
    assert parquet != _run_config("--source", "captions.parquet", "--stream-column", "camera",
                                  "--history", "h").checkpoint_job
    assert _run_config("--source", redis, "--history", "h", "--job-id", "nightly").checkpoint_job == "nightly"
    assert _run_config("--source", redis).checkpoint_job is None  # no store: nowhere durable to checkpoint
    assert _run_config("--source", redis, "--history", "h", "--restart").restart


def test_the_start_up_line_says_whether_a_crash_can_cost_anything():
    from workers.cli.output import durability_line

    line = durability_line({"job": "run-frames-0123", "history": "h", "checkpoint_every_s": 5.0})
    assert "checkpointed as job run-frames-0123 (every 5 s" in line and "loses nothing" in line
    line = durability_line({"job": None, "history": None})
    assert line.startswith("not checkpointed (no --history)") and "add --history DIR" in line
