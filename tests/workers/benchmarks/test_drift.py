"""`splice-monitor bench drift --json` runs end to end at a small scale and prints the documented keys."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from monitor.cli.main import main
from monitor.errors import ConfigError
from workers.benchmarks import intervals


def test_bench_drift_prints_one_json_object_with_the_documented_keys(capsys):
    rc = main(["bench", "drift", "--json", "--concepts", "500", "--mean-l0", "10", "--window", "500",
               "--reference", "4000", "--ert", "1000", "--null-items", "8000", "--seeds", "1", "--horizon", "2000",
               "--null-seeds", "2", "--target-seeds", "6",
               "--planted", "3", "--mmd-reference", "500", "--mmd-bootstraps", "200", "--dim", "32",
               "--throughput-images", "5000", "--no-captions"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("machine", "date", "ert_items", "batch_items", "throughput_images_per_s", "null", "scenarios",
                "captions", "targets", "wall_s"):
        assert key in out
    null = out["null"]
    assert null["items"] == 16_000 and null["calibration"]["alarms"] > 0 and out["throughput_images_per_s"] > 0
    assert set(out["update_ms_by_batch"]) == {"64", "100"} and min(out["update_ms_by_batch"].values()) > 0
    assert null["false_alarms"] == 0 or null["run_length_items"] == 16_000 / null["false_alarms"]
    assert null["seeds"] == 2 and sum(null["alarms_per_seed"]) == null["false_alarms"]
    lo, hi = intervals.run_length_ratio_ci(16_000, null["false_alarms"], 1000.0)
    assert null["ratio_ci95"] == [round(lo, 4), None if hi is None else round(hi, 4)]
    assert {(s["kind"], s["size"]) for s in out["scenarios"]} >= {("prevalence", 3.0), ("activation", 3.0)}
    strong = next(s for s in out["scenarios"] if (s["kind"], s["size"]) == ("prevalence", 5.0))
    assert strong["recall"] == 1.0 and strong["wrong_direction"] == 0
    assert 0 < strong["delay_items_median"] <= strong["delay_censored_at"]
    assert strong["runs"] == 1 and len(strong["delays"]) == 1 and strong["delay_ci95"] is None
    # the x3 target runs --target-seeds times; six runs give the [min, max] interval of the median at 96.9 %
    target = next(s for s in out["scenarios"] if (s["kind"], s["size"]) == ("prevalence", 3.0))
    delays = [target["delay_censored_at"] if d is None else d for d in target["delays"]]
    assert target["runs"] == len(delays) == 6 and target["delay_items_median"] == float(np.median(delays))
    assert target["delay_ci95"] == [min(delays), max(delays)] and target["delay_ci_coverage"] == 0.9688
    assert out["captions"] is None
    targets = out["targets"]
    assert set(targets) == {"stated_shift", "synthetic_delay_ok", "synthetic_precision_ok",
                            "null_run_length_ok", "caption_null_run_length_ok", "caption_precision_ok",
                            "caption_delay_ok", "throughput_ok", "null_run_length_verdict",
                            "caption_null_run_length_verdict", "synthetic_delay_verdict"}
    assert targets["null_run_length_verdict"] == intervals.band_verdict(null["ratio_to_ert"], null["ratio_ci95"],
                                                                        1.0, 2.0)
    assert targets["synthetic_delay_verdict"] == intervals.band_verdict(
        target["delay_items_median"], target["delay_ci95"], -math.inf, 250)
    assert (targets["synthetic_delay_verdict"] in ("met", "met_with_confidence")) == targets["synthetic_delay_ok"]
    assert targets["caption_null_run_length_verdict"] is None


def test_bench_drift_only_nulls_runs_just_the_no_drift_streams(capsys):
    rc = main(["bench", "drift", "--json", "--only", "nulls", "--concepts", "400", "--mean-l0", "8",
               "--window", "500", "--reference", "3000", "--ert", "500", "--null-items", "3000",
               "--null-seeds", "3", "--no-captions"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scenarios"] == [] and out["peers"] is None and out["throughput_images_per_s"] is None
    null = out["null"]
    assert null["items"] == 9000 and null["seeds"] == 3 and len(null["alarms_per_seed"]) == 3
    assert len(null["threshold_nats_per_seed"]) == 3 and null["false_alarms"] == sum(null["alarms_per_seed"])
    assert null["false_alarms"] > 0  # 18 x ERT of stream: a null without alarms would not test the interval
    lo, hi = null["ratio_ci95"]
    assert lo < null["ratio_to_ert"] < hi
    targets = out["targets"]
    assert targets["null_run_length_verdict"] in intervals.VERDICTS
    assert targets["synthetic_delay_ok"] is None and targets["synthetic_delay_verdict"] is None
    assert targets["throughput_ok"] is None and targets["caption_delay_ok"] is None


@pytest.mark.parametrize("option", ["--null-seeds", "--target-seeds", "--seeds"])
def test_bench_drift_refuses_zero_seeds(option, capsys):
    rc = main(["bench", "drift", "--json", option, "0", "--no-captions"])
    assert rc == ConfigError.exit_code
    assert option in capsys.readouterr().err
