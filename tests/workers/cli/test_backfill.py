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
