"""What ``run`` tells its user, tried as a user types it: a stream too short to fill the reference ends with a notice
(summary, log and gauge) instead of a silent "0 fired"; ``--json`` prints one JSON object; failures before Ray starts
are one line with the documented exit code."""

from __future__ import annotations

import json

import numpy as np
from prometheus_client import CollectorRegistry

from monitor.cli.main import main as cli_main
from monitor.drift import ConceptMonitor, MonitorConfig, ReferenceConfig, WindowConfig
from monitor.metrics.families import MonitorMetrics
from monitor.records import ItemMeta, SparseCodes
from tests.workers.helpers import caption_parquet, free_port
from workers.summary import reference_fill, reference_notice


def _codes(n: int, c: int = 8, seed: int = 0) -> SparseCodes:
    rng = np.random.default_rng(seed)
    w = np.where(rng.random((n, c)) < 0.3, rng.uniform(0.1, 1.0, (n, c)), 0.0)
    return SparseCodes.from_dense(w, fidelity=np.full(n, 0.8), l1=0.25)


def test_a_reference_that_never_filled_says_no_test_ran_and_what_to_change():
    names = [f"c{j}" for j in range(8)]
    config = MonitorConfig(window=WindowConfig(size=1000), reference=ReferenceConfig(n_images=10_000))
    mon = ConceptMonitor(names, config)
    mon.update(_codes(6000), [ItemMeta(id=str(i), timestamp=float(i)) for i in range(6000)])
    mon.flush()
    fill = reference_fill(mon.status("default"), config)
    assert fill == {"mode": "fixed", "filled": 6000, "needed": 10_000, "ratio": 0.6, "tests": 0}
    assert reference_notice(fill) == ("reference 6,000/10,000: no drift test ran; use --reference-images N or "
                                      "--reference history")

    # with a reference that fits, tests run and there is nothing to say
    small = MonitorConfig(window=WindowConfig(size=1000), reference=ReferenceConfig(n_images=2000))
    mon = ConceptMonitor(names, small)
    mon.update(_codes(6000), [ItemMeta(id=str(i), timestamp=float(i)) for i in range(6000)])
    fill = reference_fill(mon.status("default"), small)
    assert fill["ratio"] == 1.0 and fill["tests"] > 0 and reference_notice(fill) is None

    reg = CollectorRegistry()
    metrics = MonitorMetrics(names, registry=reg)
    metrics.set_reference_fill("default", 0.6)
    assert reg.get_sample_value("splice_reference_fill_ratio", {"stream": "default"}) == 0.6


def test_a_short_stream_ends_with_the_reference_notice_in_the_summary_the_log_and_the_gauge(
        ray_local, test_vocab, cache_dir, tmp_path, capsys):
    uri, ids = caption_parquet(tmp_path / "captions.parquet", 6000, seed=4)
    port = free_port()
    rc = cli_main(["run", "--source", uri, "--model", "minilm", "--vocab", test_vocab, "--mean", "vocab",
                   "--cache-dir", cache_dir, "--window", "1000", "--workers", "1", "--batch-size", "500",
                   "--metrics-port", str(port), "--status-every", "5"])
    captured = capsys.readouterr()
    assert rc == 0
    notice = "reference 6,000/10,000: no drift test ran; use --reference-images N or --reference history"
    assert f"notice:         {notice}" in captured.out  # the summary
    assert f"splice-monitor WARNING: {notice}" in captured.err  # the log
    assert "images counted: 6000" in captured.out and "alarms:         0 fired" in captured.out
    assert "starting Ray" in captured.err and "running: 1 worker(s)" in captured.err


def test_json_summary_holds_the_counts_notices_and_alarm_events(ray_local, test_vocab, cache_dir, tmp_path, capsys):
    uri, ids = caption_parquet(tmp_path / "captions.parquet", 300, seed=5)
    rc = cli_main(["run", "--json", "--quiet", "--source", uri, "--model", "minilm", "--vocab", test_vocab,
                   "--mean", "vocab", "--cache-dir", cache_dir, "--window", "100", "--reference-images", "100",
                   "--workers", "1", "--metrics-port", "-1"])
    captured = capsys.readouterr()
    assert rc == 0
    doc = json.loads(captured.out)  # stdout is the one JSON object, nothing else
    assert doc["command"] == "run" and doc["images"] == len(ids) and doc["stopped_by"] == "end"
    assert [fill["ratio"] for fill in doc["references"].values()] == [1.0] and doc["notices"] == []
    assert isinstance(doc["alarm_events"], list) and len(doc["alarm_events"]) == doc["alarms"]
    assert "starting Ray" not in captured.err  # --quiet


def test_an_unreachable_redis_source_is_one_line_and_exit_2_before_ray_starts(capsys):
    port = free_port()  # nothing listens there
    rc = cli_main(["run", "--source", f"redis://127.0.0.1:{port}/0?stream=frames&group=g", "--metrics-port", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith(f"splice-monitor run: cannot reach the source redis://127.0.0.1:{port}/0")
    assert "check the address" in err[-1] and not any("Traceback" in line for line in err)
    assert not any("starting Ray" in line for line in err)  # found before Ray starts


def test_an_unknown_model_fails_before_ray_starts_naming_close_matches(capsys):
    rc = cli_main(["run", "--source", "/nonexistent", "--model", "ViT-B-23", "--metrics-port", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("splice-monitor run: model: unknown model 'ViT-B-23'; did you mean") and \
        "ViT-B-32" in err[-1]
    assert not any("starting Ray" in line for line in err)


def test_the_start_up_line_says_when_the_published_image_mean_centres_the_embeddings(capsys):
    from workers.cli.output import Console

    console = Console("run", quiet=False, json_output=False, log_level="warning")
    info = {"workers": 1, "gpus_per_worker": 0.0, "encoder": "open_clip:ViT-B-32:openai", "n_concepts": 10_000,
            "metrics_address": None,
            "mean": "SpLiCE's published image mean for ViT-B-32 openai (clip_ViT-B-32_openai.npy)"}
    console.started(info)
    err = capsys.readouterr().err
    assert "mean: SpLiCE's published image mean for ViT-B-32 openai" in err
    assert "splice-monitor calibrate" in err and "--mean" in err

    # a calibrated (or given) mean is the user's own choice: nothing more to say
    console.started({**info, "mean": "/data/cam7-mean.npy"})
    assert "mean:" not in capsys.readouterr().err


def test_a_worker_reports_which_mean_it_centres_with(tmp_path):
    from workers.actors import WorkerHost
    from workers.core import WorkerConfig

    host = WorkerHost(WorkerConfig(model="null:32", vocab=["cat", "dog", "snow", "car"], mean="vocab",
                                  cache_dir=str(tmp_path)))
    assert host.info()["mean"] == host.worker.decomposer.mean_source == "vocabulary text mean"
