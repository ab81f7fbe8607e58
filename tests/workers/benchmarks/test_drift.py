"""`splice-monitor bench drift --json` runs end to end at a small scale and prints the documented keys."""

from __future__ import annotations

import json

from monitor.cli.main import main


def test_bench_drift_prints_one_json_object_with_the_documented_keys(capsys):
    rc = main(["bench", "drift", "--json", "--concepts", "500", "--mean-l0", "10", "--window", "500",
               "--reference", "4000", "--null-steps", "20", "--seeds", "1", "--horizon", "6", "--planted", "3",
               "--mmd-reference", "1000", "--mmd-bootstraps", "200", "--dim", "32", "--throughput-images", "5000"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("machine", "date", "throughput_images_per_s", "null", "null_small_ert", "mmd_null", "scenarios",
                "targets", "wall_s"):
        assert key in out
    assert out["null"]["steps"] >= 20 and out["throughput_images_per_s"] > 0
    assert {(s["kind"], s["size"]) for s in out["scenarios"]} >= {("prevalence", 3.0), ("activation", 3.0)}
    strong = next(s for s in out["scenarios"] if (s["kind"], s["size"]) == ("prevalence", 5.0))
    assert strong["recall"] == 1.0 and strong["wrong_direction"] == 0
    assert strong["delay_images_median"] <= strong["delay_censored_at"]
    assert set(out["targets"]) == {"stated_shift", "run_length_ok", "precision_ok", "recall_ok", "delay_ok",
                                   "throughput_ok"}
