"""``bench pipeline --encoder null``: the control-plane benchmark runs the real driver, Ray workers, aggregator,
metrics and history on Parquet and on a redis-server it starts itself, counts every item exactly, reports the CPU
of each process and, with the solver on, the ratio to ``bench solver`` on the same data."""

from __future__ import annotations

import argparse
import shutil

import pytest

from monitor.errors import ConfigError
from workers.benchmarks import pipeline as bench

RUN_KEYS = {"items", "elapsed_s", "items_per_s", "batches", "windows_closed", "cpu_cores", "cpu_us_per_item",
            "source", "solver", "workers"}


def _args(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(["--encoder", "null", *argv])


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_control_plane_counts_every_item_on_both_sources_with_the_solver_on_and_off(ray_local):
    result = bench.run(_args("--sources", "parquet,redis", "--solver", "off,on", "--workers", "1",
                             "--items", "700", "--solver-items", "300", "--concepts", "600", "--batch-size", "64",
                             "--payload-bytes", "256", "--profile"))
    assert result["mode"] == "control_plane" and result["n_concepts"] == 600 and result["model"] == "null:512"
    runs = {(r["source"], r["solver"]): r for r in result["runs"]}
    assert set(runs) == {("parquet", "off"), ("parquet", "on"), ("redis", "off"), ("redis", "on")}
    for (source, solver), r in runs.items():
        assert RUN_KEYS <= set(r)
        assert r["items"] == (700 if solver == "off" else 300)  # the bench raises unless every item was counted
        assert r["batches"] == -(-r["items"] // 64)
        assert r["items_per_s"] > 0
        assert {"driver", "aggregator", "workers", "ray_system"} <= set(r["cpu_cores"]) == set(r["cpu_us_per_item"])
        assert r["cpu_us_per_item"]["driver"] > 0 and r["cpu_us_per_item"]["workers"] > 0
        assert ("redis" in r["cpu_cores"]) == (source == "redis")
        assert r["driver_profile"] and {"function", "own_s", "cum_s", "calls"} <= set(r["driver_profile"][0])
        assert result[f"items_per_s_{source}_solver_{solver}_1w"] == r["items_per_s"]
    ref = result["solver_bench"]
    assert ref["img_per_s_1_thread"] > 0 and ref["img_per_s_all_threads"] > 0
    assert ref["cpu_us_per_item_1_thread"] > 0
    assert ref["certificate_gap_max"] <= 1e-4
    for source in ("parquet", "redis"):
        assert result[f"vs_bench_solver_{source}_1w"] == pytest.approx(
            runs[(source, "on")]["items_per_s"] / ref["img_per_s_1_thread"])
        assert result[f"solver_cpu_share_{source}_1w"] == pytest.approx(
            ref["cpu_us_per_item_1_thread"] / runs[(source, "on")]["cpu_us_per_item"]["workers"])


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_worker_claims_and_two_aggregators_count_every_item_and_report_each_aggregators_cpu(ray_local):
    result = bench.run(_args("--sources", "redis", "--redis-claim", "driver,worker", "--aggregators", "2",
                             "--streams", "8", "--solver", "off", "--workers", "1", "--items", "700",
                             "--concepts", "600", "--batch-size", "64", "--payload-bytes", "256"))
    assert result["aggregators"] == 2 and result["streams"] == 8
    runs = {r["source"]: r for r in result["runs"]}
    assert set(runs) == {"redis", "redis_worker"}
    for r in runs.values():
        assert r["items"] == 700  # the bench raises unless every item was counted
        cpu = r["cpu_us_per_item"]
        assert {"aggregator_0", "aggregator_1", "redis"} <= set(cpu)
        # the per-aggregator figures are the summed one split (each rounded to 0.1 us)
        assert cpu["aggregator_0"] + cpu["aggregator_1"] == pytest.approx(cpu["aggregator"], abs=0.11)
        assert cpu["aggregator_0"] > 0 and cpu["aggregator_1"] > 0  # 8 streams: both shards get work
    assert result["items_per_s_redis_worker_solver_off_1w"] == runs["redis_worker"]["items_per_s"]


@pytest.mark.parametrize("argv, match", [
    (("--sources", "kafka"), "--sources"),
    (("--solver", "maybe"), "--solver"),
    (("--workers", "0"), "--workers"),
    (("--items", "0"), "--items"),
    (("--aggregators", "0"), "--aggregators"),
    (("--redis-claim", "both"), "--redis-claim"),
])
def test_bad_options_name_the_flag(argv, match):
    with pytest.raises(ConfigError, match=match):
        bench.run(_args(*argv))
