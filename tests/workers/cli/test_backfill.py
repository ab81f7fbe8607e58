"""``splice-monitor backfill`` end to end on local Ray: the final metrics reach a real Pushgateway."""

from __future__ import annotations

from monitor.cli.main import main as cli_main
from tests.workers.helpers import caption_parquet, pushed_samples


def test_backfill_pushes_its_final_counts_to_the_pushgateway(ray_local, test_vocab, cache_dir, tmp_path, pushgateway,
                                                             capsys):
    uri, ids = caption_parquet(tmp_path / "archive.parquet", 180)
    rc = cli_main(["backfill", "--source", uri, "--history", str(tmp_path / "h"), "--job-id", "archive-7",
                   "--pushgateway", pushgateway, "--no-progress", "--workers", "2", "--batch-size", "60",
                   "--model", "minilm", "--vocab", test_vocab, "--mean", "vocab", "--cache-dir", cache_dir,
                   "--window", "60", "--reference-images", "60"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"images counted: {len(ids)}" in out and f"pushed:         final metrics to {pushgateway}" in out
    images = pushed_samples(pushgateway, "splice_batch_images", job="splice-backfill", run="archive-7")
    assert images and sum(images) == len(ids)
    (windows,) = pushed_samples(pushgateway, "splice_batch_windows_closed", job="splice-backfill", run="archive-7")
    assert f"windows closed: {int(windows)}" in out and windows >= 1
    assert not pushed_samples(pushgateway, "splice_concept_alarm_firing", job="splice-backfill")


def test_backfill_reports_an_unreachable_pushgateway_with_exit_1(ray_local, test_vocab, cache_dir, tmp_path, capsys):
    uri, ids = caption_parquet(tmp_path / "archive.parquet", 40)
    rc = cli_main(["backfill", "--source", uri, "--history", str(tmp_path / "h"), "--no-progress",
                   "--pushgateway", "http://127.0.0.1:1", "--workers", "1", "--batch-size", "40",
                   "--model", "minilm", "--vocab", test_vocab, "--mean", "vocab", "--cache-dir", cache_dir,
                   "--window", "40", "--reference-images", "40"])
    captured = capsys.readouterr()
    assert rc == 1
    assert f"images counted: {len(ids)}" in captured.out  # the backfill itself completed
    assert "pushing the final metrics failed" in captured.err and "127.0.0.1:1" in captured.err


BEACH_WORDS = {"beach", "sandy", "ocean", "waves", "seashore", "tropical", "coast", "sea", "surfer", "sailboat",
               "seagulls", "lifeguard", "sunbathers", "sand", "castle", "umbrella", "sunshine", "summer", "sunset",
               "palm", "surf", "surfing", "shore", "tropical", "island", "swimming"}
STREET_WORDS = {"street", "city", "intersection", "downtown", "traffic", "crosswalk", "road", "parking", "car", "bus",
                "taxi", "cyclist", "truck", "pedestrians", "pedestrian", "motorcycle", "lamps", "buildings", "rush",
                "urban", "wet", "delivery", "yellow", "red"}


def test_a_backfilled_archive_whose_topic_changes_shows_the_new_topic_rising_in_history_compare(
        ray_local, test_vocab, cache_dir, tmp_path, capsys):
    """Issue 6's semantic check through the real MiniLM model: street scenes until 00:05, beach scenes after."""
    import json

    t0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, one caption a second
    uri, ids = caption_parquet(tmp_path / "archive.parquet", 600, shift_at=300, before={"street": 1.0},
                               after={"beach": 1.0}, start=t0, seed=5)
    store = str(tmp_path / "h")
    rc = cli_main(["backfill", "--source", uri, "--history", store, "--no-progress", "--workers", "2",
                   "--batch-size", "100", "--model", "minilm", "--vocab", test_vocab, "--mean", "vocab",
                   "--cache-dir", cache_dir, "--window", "60s", "--reference-images", "300"])
    assert rc == 0
    assert f"images counted: {len(ids)}" in capsys.readouterr().out
    rc = cli_main(["history", "compare", "--store", store, "--from", "2026-01-01T00:05:00Z",
                   "--to", "2026-01-01T00:10:00Z", "--baseline-from", "2026-01-01T00:00:00Z",
                   "--baseline-to", "2026-01-01T00:05:00Z", "--top", "10", "--format", "json"])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)
    assert doc["current"]["n_images"] == 300 and doc["baseline"]["n_images"] == 300
    risers = [r["concept"] for r in doc["rising"]]
    fallers = [r["concept"] for r in doc["falling"]]
    assert len(set(risers[:5]) & BEACH_WORDS) >= 2, risers
    assert len(set(fallers[:5]) & STREET_WORDS) >= 2, fallers
    assert not set(risers) & STREET_WORDS and not set(fallers) & BEACH_WORDS


def test_a_finished_backfill_that_raised_alarms_leaves_no_alert_firing_in_prometheus(
        ray_local, test_vocab, cache_dir, tmp_path, pushgateway, capsys):
    """The issue's failure, end to end: a real backfill that raises drift alarms pushes to a real Pushgateway, a real
    Prometheus scrapes it and evaluates the shipped rules (time-compressed `for:`): nothing fires, ever, yet the
    run's results, its alarm count included, are in Prometheus."""
    import re
    import shutil
    import time

    import pytest

    from dashboards.ruleset import RuleConfig, build_rules, dump_yaml
    from tests.dashboards.helpers import running_prometheus

    if shutil.which("prometheus") is None:
        pytest.skip("needs Debian's prometheus")
    fast = RuleConfig(interval="1s", window="10s", rate_window="5s", min_images=1, concept_for="1s", alarm_for="1s",
                      stream_for="1s", stall_window="4s", stall_for="1s", dead_letter_window="5s", dead_letter_for="1s",
                      fidelity_window="5s", fidelity_for="1s", exporter_for="1s", absent_for="1h")
    scrape = [{"job_name": "pushgateway", "honor_labels": True,
               "static_configs": [{"targets": [pushgateway.removeprefix("http://")]}]}]
    uri, ids = caption_parquet(tmp_path / "archive.parquet", 600, shift_at=300, before={"street": 1.0},
                               after={"beach": 1.0}, start=1_767_225_600.0, seed=5)
    (tmp_path / "prom").mkdir()
    with running_prometheus(tmp_path / "prom", dump_yaml(build_rules(fast)), scrape) as prom:
        rc = cli_main(["backfill", "--source", uri, "--history", str(tmp_path / "h"), "--job-id", "shifted",
                       "--pushgateway", pushgateway, "--no-progress", "--workers", "2", "--batch-size", "100",
                       "--model", "minilm", "--vocab", test_vocab, "--mean", "vocab", "--cache-dir", cache_dir,
                       "--window", "60s", "--reference-images", "300"])
        out = capsys.readouterr().out
        assert rc == 0, out
        fired = int(re.search(r"alarms:\s+(\d+) fired", out).group(1))
        assert fired > 0, "the planted topic change must raise alarms, or this test proves nothing"
        deadline = time.monotonic() + 20
        pushed = []
        while time.monotonic() < deadline and not pushed:
            pushed = prom.query('splice_batch_alarms{job="splice-backfill",run="shifted"}')
            time.sleep(0.25)
        assert pushed and float(pushed[0]["value"][1]) == fired
        time.sleep(4.0)  # several 1 s evaluations past every `for:`
        assert prom.firing() == [], "a finished batch job must leave no alert firing"
        images = prom.query('sum(splice_batch_images{job="splice-backfill",run="shifted"})')
        assert float(images[0]["value"][1]) == len(ids)
