"""`splice-monitor bench drift --json` runs end to end at a small scale and prints the documented keys."""

from __future__ import annotations

import json

from monitor.cli.main import main


def test_bench_drift_prints_one_json_object_with_the_documented_keys(capsys):
    rc = main(["bench", "drift", "--json", "--concepts", "500", "--mean-l0", "10", "--window", "500",
               "--reference", "4000", "--ert", "1000", "--null-items", "8000", "--seeds", "1", "--horizon", "2000",
               "--planted", "3", "--mmd-reference", "500", "--mmd-bootstraps", "200", "--dim", "32",
               "--throughput-images", "5000", "--no-captions"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("machine", "date", "ert_items", "batch_items", "throughput_images_per_s", "null", "scenarios",
                "captions", "targets", "wall_s"):
        assert key in out
    null = out["null"]
    assert null["items"] == 8000 and null["calibration"]["alarms"] > 0 and out["throughput_images_per_s"] > 0
    assert set(out["update_ms_by_batch"]) == {"64", "100"} and min(out["update_ms_by_batch"].values()) > 0
    assert null["false_alarms"] == 0 or null["run_length_items"] == 8000 / null["false_alarms"]
    assert {(s["kind"], s["size"]) for s in out["scenarios"]} >= {("prevalence", 3.0), ("activation", 3.0)}
    strong = next(s for s in out["scenarios"] if (s["kind"], s["size"]) == ("prevalence", 5.0))
    assert strong["recall"] == 1.0 and strong["wrong_direction"] == 0
    assert 0 < strong["delay_items_median"] <= strong["delay_censored_at"]
    assert out["captions"] is None
    assert set(out["targets"]) == {"stated_shift", "synthetic_delay_ok", "synthetic_precision_ok",
                                   "null_run_length_ok", "caption_null_run_length_ok", "caption_precision_ok",
                                   "caption_delay_ok", "throughput_ok"}
