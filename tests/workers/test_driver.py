"""End to end on real Ray and a real redis-server: every item of a finite source is counted exactly once with two
workers, windows reach the history store, metrics are served while the stream runs, the CLI prints its summary, and
a stop request commits what is in flight, acknowledges it and flushes."""

from __future__ import annotations

import re
from dataclasses import replace
import threading
import urllib.request

import pytest

from monitor.drift.monitor import MonitorConfig, ReferenceConfig, WindowConfig
from monitor.history.store import HistoryStore
from monitor.cli.main import main as cli_main
from tests.workers.helpers import add_captions, caption_parquet
from workers.config import PipelineConfig
from workers.driver import run_pipeline

MONITOR = MonitorConfig(window=WindowConfig(kind="count", size=100), reference=ReferenceConfig(mode="fixed", n_images=200))


def test_parquet_captions_are_counted_exactly_once_with_two_workers(ray_local, text_config, tmp_path):
    uri, ids = caption_parquet(tmp_path / "caps.parquet", 500, shift_at=250)
    scraped = {}

    def started(info):
        scraped["address"] = info["metrics_address"]

    def progress(done, dead):
        if done >= 250 and "body" not in scraped:
            host, port = scraped["address"]
            scraped["body"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    config = PipelineConfig(source=uri, worker=text_config, workers=2, batch_size=32, monitor=MONITOR,
                            metrics_port=0, history=str(tmp_path / "history"), write_codes=True)
    summary = run_pipeline(config, on_started=started, on_progress=progress)
    assert summary.images == 500 and summary.dead_letters_total == 0
    assert summary.streams == {"camera-7": 500}
    assert summary.stopped_by == "end" and summary.retries == 0 and summary.duplicate_batches == 0
    store = HistoryStore.open(tmp_path / "history")
    windows = store.read_windows()
    assert sum(w.n_images for w in windows) == 500 and summary.windows_closed == len(windows) == 5
    codes, items = store.read_codes()
    assert sorted(it.id for it in items) == sorted(ids)
    assert items[0].metadata["topic"] in ("street", "kitchen")
    # the exporter served the live counters while the stream ran
    line = next(l for l in scraped["body"].splitlines() if l.startswith('splice_images_total{stream="camera-7"}'))
    assert 250 <= float(line.split()[-1]) <= 500


def test_redis_stream_is_counted_exactly_once_and_fully_acknowledged(ray_local, text_config, redis_url,
                                                                      redis_client):
    ids = add_captions(redis_client, "captions", 300)
    bad = [redis_client.xadd("captions", {"text": ""}).decode(), redis_client.xadd("captions", {"ts": "1"}).decode()]
    config = PipelineConfig(source=f"{redis_url}?stream=captions&group=splice&drain=1", worker=text_config,
                            workers=2, batch_size=25, monitor=MONITOR, dead_letter=f"{redis_url}?stream=dead")
    summary = run_pipeline(config)
    assert summary.images == 300
    assert summary.dead_letters == {"bad_text": 1, "bad_record": 1}
    assert redis_client.xpending("captions", "splice")["pending"] == 0
    letters = {e[1][b"item_id"].decode(): e[1][b"reason"].decode() for e in redis_client.xrange("dead")}
    assert letters == {bad[0]: "bad_text", bad[1]: "bad_record"}
    assert summary.streams == {"captions": 300} and len(ids) == 300


def test_stop_request_commits_in_flight_batches_acknowledges_them_and_flushes(ray_local, text_config, redis_url,
                                                                               redis_client):
    add_captions(redis_client, "endless", 400)
    stop = threading.Event()

    def progress(done, dead):
        if done >= 100:
            stop.set()

    config = PipelineConfig(source=f"{redis_url}?stream=endless&group=g", worker=text_config, workers=2,
                            batch_size=20, monitor=MONITOR)
    summary = run_pipeline(config, stop=stop, on_progress=progress)
    assert summary.stopped_by == "signal"
    assert 100 <= summary.images < 400
    # nothing read is left unacknowledged, and what was never read is still there for the next consumer
    assert redis_client.xpending("endless", "g")["pending"] == 0
    rest = redis_client.xreadgroup("g", "next", {"endless": ">"}, count=1000)
    assert summary.images + len(rest[0][1]) == 400


def test_run_command_processes_a_finite_source_and_prints_the_summary(ray_local, test_vocab, cache_dir, tmp_path,
                                                                       capsys):
    uri, _ = caption_parquet(tmp_path / "caps.parquet", 240)
    rc = cli_main(["run", "--source", uri, "--workers", "2", "--batch-size", "40", "--metrics-port", "-1",
                   "--model", "minilm", "--vocab", test_vocab, "--mean", "vocab", "--cache-dir", cache_dir,
                   "--window", "80", "--reference-images", "80", "--history", str(tmp_path / "h")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "images counted: 240" in out and "dead letters:   0" in out and "windows closed: 3" in out


def test_run_command_rejects_a_bad_window_naming_the_flag(capsys):
    rc = cli_main(["run", "--source", "/nonexistent", "--window", "fortnight"])
    assert rc == 2
    assert "--window must be an image count" in capsys.readouterr().err


def test_interrupted_backfill_resumes_from_its_checkpoint_and_counts_each_row_once(ray_local, text_config,
                                                                                    tmp_path):
    uri, ids = caption_parquet(tmp_path / "archive.parquet", 400)
    history = str(tmp_path / "h")
    stop = threading.Event()

    def progress(done, dead):
        if done >= 120:
            stop.set()

    config = PipelineConfig(source=uri, worker=text_config, workers=2, batch_size=20, monitor=MONITOR,
                            history=history, write_codes=True, checkpoint_job="archive", checkpoint_every_s=0.0)
    first = run_pipeline(config, stop=stop, on_progress=progress)
    assert first.stopped_by == "signal" and 120 <= first.images < 400
    cp = HistoryStore.open(history).get_checkpoint("archive")
    assert cp["done"] is False and cp["images"] == first.images
    started = {}
    second = run_pipeline(config, on_started=started.update)
    assert started["resumed_items"] == first.images
    assert second.images == 400  # cumulative over both runs
    store = HistoryStore.open(history)
    assert store.get_checkpoint("archive")["done"] is True
    _, items = store.read_codes()
    assert sorted(it.id for it in items) == sorted(ids)
    windows = store.read_windows()
    assert [w.n_images for w in windows] == [100, 100, 100, 100]  # the interrupted window was continued


def test_demo_runs_offline_and_names_the_new_topic(ray_local, test_vocab, cache_dir, capsys):
    rc = cli_main(["demo", "--captions", "900", "--window", "100", "--reference-images", "300", "--vocab", test_vocab,
                   "--cache-dir", cache_dir, "--metrics-port", "0", "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "images counted: 900" in out
    assert "modality mean calibrated on the first 300 (reference) captions" in out
    fired, resolved = map(int, re.search(r"alarms:\s+(\d+) fired, (\d+) resolved", out).groups())
    assert fired >= 1 and fired == sum(l.startswith("ALARM") for l in out.splitlines())
    assert resolved == sum(l.startswith("resolved:") for l in out.splitlines())
    assert "p<=" in out  # labelled as the bound it is (exp(-evidence), uncorrected)
    snowy = {"snow", "snowy", "winter", "ski", "skier", "skiing", "icy", "frozen", "ice"}
    rising = next(l for l in out.splitlines() if l.startswith("rising concepts"))
    assert snowy & set(rising.split(": ", 1)[1].split(", "))
    # the sequential tests name the new topic's concepts as they rise (issue 15: concepts the reference never saw
    # used to alarm on one batch only, and the demo's prevalence floor suppressed it)
    alarmed = re.findall(r"^ALARM '(\w+)' prevalence on camera-7: ([\d.]+)% -> ([\d.]+)%", out, re.M)
    assert snowy & {w for w, ref, cur in alarmed if float(cur) > float(ref)}, alarmed
    assert "Prometheus metrics at http://" in out


def test_sigterm_stops_a_followed_directory_run_with_a_flushed_summary(ray_local, image_config, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.workers.helpers import jpeg_bytes

    for i in range(12):
        p = tmp_path / f"{i:03d}.jpg"
        p.write_bytes(jpeg_bytes(i))
        os.utime(p, (time.time() - 100 + i,) * 2)
    (tmp_path / "broken.jpg").write_bytes(b"")
    cmd = [sys.executable, "-m", "monitor", "run", "--source", f"dir://{tmp_path}?follow=1&poll_s=0.2&stream=cam",
           "--ray-address", "auto", "--workers", "2", "--model", "ViT-S-32", "--pretrained", "random",
           "--vocab", image_config.vocab, "--cache-dir", image_config.cache_dir, "--mean", "vocab",
           "--window", "5", "--reference-images", "5", "--metrics-port", "-1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stderr:  # wait until the workers run
            if line.startswith("running:") or time.monotonic() > deadline:
                break
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "images counted: 12" in out and "empty=1" in out and "stopped by signal" in out


def test_bad_timestamps_duplicates_and_refused_streams_never_stop_a_redis_run(ray_local, text_config, redis_url,
                                                                             redis_client, tmp_path):
    """The probe's rows on one stream: a NaN/inf/1e400/year-9999 timestamp stopped the run and, never acknowledged,
    crashed every restart; duplicate ids vanished from the counts; refused streams were not counted in Prometheus.
    Now each is a dead letter with its reason, written before the entry is acknowledged, and the counts add up."""
    from monitor.synthetic.captions import CaptionStream

    from workers.deadletter import read_parquet_dead_letters

    captions = list(CaptionStream(n=60, seed=3))
    pipe = redis_client.pipeline(transaction=False)
    expected: dict[str, str] = {}
    for k, c in enumerate(captions):
        fields = {"text": c.text, "ts": repr(c.timestamp), "uid": f"u{k}", "camera": f"cam{k % 2}"}
        if k in (5, 17, 29, 41):
            fields["ts"] = ["nan", "inf", "1e400", "9999-12-31T00:00:00"][(k - 5) // 12]
            expected[f"u{k}"] = "bad_timestamp"
        if k in (31, 50):
            fields["uid"] = f"u{k - 20}"  # repeats an id sent earlier
        if k in (7, 8, 9):
            fields["camera"] = "cam-extra"  # a third stream, beyond --max-streams 2
            expected[f"u{k}"] = "stream_limit"
        pipe.xadd("caps", fields)
    pipe.execute()
    source = f"{redis_url}?stream=caps&group=g&drain=1&id_field=uid&stream_field=camera"
    config = PipelineConfig(source=source, worker=text_config, workers=1, batch_size=8,
                            monitor=replace(MONITOR, max_streams=2), metrics_port=0,
                            dead_letter=f"parquet://{tmp_path / 'dead'}")
    scraped = {}

    def started(info):
        scraped["address"] = info["metrics_address"]

    def scrape():  # the exporter lives in the aggregator actor: read it while the run is up
        host, port = scraped["address"]
        scraped["body"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    summary = run_pipeline(config, on_started=started, on_progress=lambda done, dead: scrape())
    assert summary.dead_letters == {"bad_timestamp": 4, "stream_limit": 3}
    assert summary.duplicates == 2
    assert summary.images == 60 - 4 - 3 - 2
    assert summary.images + summary.dead_letters_total + summary.duplicates == 60
    assert redis_client.xpending("caps", "g")["pending"] == 0  # all acknowledged, the bad ones included
    letters = read_parquet_dead_letters(str(tmp_path / "dead")).to_pylist()
    assert {d["item_id"]: d["reason"] for d in letters if d["reason"] != "duplicate"} == expected
    assert sorted(d["item_id"] for d in letters if d["reason"] == "duplicate") == ["u11", "u30"]
    # the last scrape after the last commit
    assert 'splice_dead_letters_total{reason="stream_limit",stream="_over_limit"} 3.0' in scraped["body"]
    assert 'splice_dead_letters_total{reason="bad_timestamp",stream="cam1"} ' in scraped["body"]
    # a rerun on the same group finds nothing left to crash on
    assert run_pipeline(config).images == 0


def test_an_error_raised_while_an_actor_starts_reaches_the_driver_as_the_same_typed_exception(ray_local, tmp_path):
    # the aggregator refuses a history reference store that does not exist: a ConfigError in its constructor
    from monitor.errors import ConfigError, PipelineError
    from workers.actors import aggregator_actor_class
    from workers.config import AggregatorConfig, HistoryReference
    from workers.driver import _startup_get

    missing = str(tmp_path / "no-such-store")
    actor = aggregator_actor_class().remote(
        AggregatorConfig(monitor=MONITOR, reference_history=HistoryReference(missing, 0.0, 1.0)), ["a", "b"], "s")
    with pytest.raises(ConfigError) as info:
        _startup_get([actor.ready.remote()], "the aggregator actor")
    assert type(info.value) is ConfigError and "no-such-store" in str(info.value)
    assert "\n" not in str(info.value)  # the original one-line message, not Ray's wrapped traceback
    ray_local.kill(actor)

    # anything that is not a SpliceError is a PipelineError naming what failed to start
    @ray_local.remote(num_cpus=0)
    class Broken:
        def ready(self):
            raise RuntimeError("disk on fire")

    broken = Broken.remote()
    with pytest.raises(PipelineError, match="the test actor failed to start: .*disk on fire"):
        _startup_get([broken.ready.remote()], "the test actor")
    ray_local.kill(broken)
