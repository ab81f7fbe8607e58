"""The aggregator core without Ray: a batch carrying streams beyond the stream limit changes no state for those
streams, dead-letters their items as ``stream_limit`` naming the limit (counted in Prometheus under one label
value), counts the rest, and records the commit once; repeated ids are ``duplicate`` dead letters; a dead-letter
sink that fails leaves no trace of the batch."""

from __future__ import annotations

import numpy as np

from monitor.records import ItemMeta, SparseCodes
from dataclasses import replace

from monitor.drift.monitor import DEFAULT_MAX_STREAMS, MonitorConfig, ReferenceConfig, WindowConfig
from workers.items import Partial
from monitor.errors import PipelineError
from monitor.metrics.families import OVER_LIMIT_STREAM
from workers.actors import AggregatorCore
from workers.config import AggregatorConfig, HistoryReference

NAMES = [f"concept{j}" for j in range(12)]
MONITOR = MonitorConfig(window=WindowConfig(kind="count", size=50), reference=ReferenceConfig(mode="fixed", n_images=100))


def _partial(streams: list[str], prefix: str = "i", seed: int = 0, ids: list[str] | None = None) -> Partial:
    rng = np.random.default_rng(seed)
    n = len(streams)
    dense = np.where(rng.random((n, len(NAMES))) < 0.3, rng.random((n, len(NAMES))), 0.0)
    codes = SparseCodes.from_dense(dense, fidelity=np.full(n, 0.9), l1=0.25)
    ids = ids or [f"{prefix}{k}" for k in range(n)]
    items = [ItemMeta(id=i, timestamp=1000.0 + k, stream=s) for k, (i, s) in enumerate(zip(ids, streams))]
    return Partial(codes=codes, items=items)


def _images_total(agg: AggregatorCore) -> float:
    return sum(s.value for fam in agg.metrics.registry.collect() for s in fam.samples
               if s.name == "splice_images_total")


def test_streams_beyond_the_metrics_limit_are_dead_lettered_and_a_retry_counts_nothing_twice():
    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR, metrics_port=0, metrics_host="127.0.0.1"), NAMES, "space")
    try:
        streams = [f"cam-{k}" for k in range(70)]
        first = agg.commit(1, _partial(streams))
        assert (first.counted, first.dead_letters, first.duplicate) == (DEFAULT_MAX_STREAMS, 70 - DEFAULT_MAX_STREAMS,
                                                                         False)
        again = agg.commit(1, _partial(streams))
        assert again.duplicate and again.counted == 0 and again.dead_letters == 0
        s = agg.summary()
        assert s["images"] == DEFAULT_MAX_STREAMS and s["batches"] == 1 and s["duplicate_batches"] == 1
        assert s["dead_letters"] == {"stream_limit": 70 - DEFAULT_MAX_STREAMS}
        # counted in Prometheus too (the probe: 94% dead-lettered, splice_dead_letters_total stayed 0), under one
        # label value so the label set stays bounded
        refused = agg.metrics.registry.get_sample_value("splice_dead_letters_total",
                                                        {"stream": OVER_LIMIT_STREAM, "reason": "stream_limit"})
        assert refused == 70 - DEFAULT_MAX_STREAMS
        assert len(agg.monitor.streams()) == DEFAULT_MAX_STREAMS and len(agg.metrics.streams) == DEFAULT_MAX_STREAMS
        assert sum(agg.monitor.status(st).n_images for st in agg.monitor.streams()) == DEFAULT_MAX_STREAMS
        assert _images_total(agg) == DEFAULT_MAX_STREAMS
        refused = {d.stream for d in agg.recent_dead_letters()}
        assert refused == set(streams[DEFAULT_MAX_STREAMS:])
        detail = agg.recent_dead_letters()[0].detail
        assert str(DEFAULT_MAX_STREAMS) in detail and "max_streams" in detail
    finally:
        agg.close()


def test_the_smaller_of_the_monitor_and_metrics_limits_applies_and_names_its_setting():
    agg = AggregatorCore(AggregatorConfig(monitor=replace(MONITOR, max_streams=3), metrics_port=0,
                                          metrics_host="127.0.0.1"), NAMES, "space")
    try:
        assert agg.stream_limit()[0] == 3 and "MonitorConfig.max_streams" in agg.stream_limit()[1]
        # the over-limit streams sit in the middle of the batch: the known streams after them still count
        result = agg.commit(1, _partial(["a", "b", "c", "d", "e", "a", "c"]))
        assert (result.counted, result.dead_letters) == (5, 2)
        assert sorted(agg.summary()["streams"].items()) == [("a", 2), ("b", 1), ("c", 2)]
        assert {d.stream for d in agg.recent_dead_letters()} == {"d", "e"}
        assert "limit of 3 streams" in agg.recent_dead_letters()[0].detail
        # later batches: known streams go on, new ones are still refused
        later = agg.commit(2, _partial(["b", "f"], prefix="j"))
        assert (later.counted, later.dead_letters) == (1, 1)
        assert agg.summary()["images"] == 6 and agg.summary()["dead_letters_total"] == 3
    finally:
        agg.close()
    # one setting (--max-streams) raises both limits: the metrics follow the monitor's max_streams
    big = AggregatorCore(AggregatorConfig(monitor=replace(MONITOR, max_streams=500), metrics_port=0,
                                          metrics_host="127.0.0.1"), NAMES, "space")
    try:
        limit, setting = big.stream_limit()
        assert limit == 500 and big.metrics.max_streams == 500 and "MonitorConfig" in setting
    finally:
        big.close()


def test_without_metrics_the_monitor_limit_alone_applies():
    agg = AggregatorCore(AggregatorConfig(monitor=replace(MONITOR, max_streams=2)), NAMES, "space")
    result = agg.commit(1, _partial(["x", "y", "z", "x"]))
    assert (result.counted, result.dead_letters) == (3, 1)
    assert agg.commit(1, _partial(["x", "y", "z", "x"])).duplicate
    assert agg.summary()["images"] == 3 and agg.summary()["dead_letters"] == {"stream_limit": 1}


def test_history_reference_loads_each_stored_stream_and_gives_new_streams_all_streams_merged(tmp_path):
    store = str(tmp_path / "h")
    writer = AggregatorCore(AggregatorConfig(monitor=MONITOR, history=store), NAMES, "space")
    writer.commit(1, _partial(["a"] * 100))
    writer.flush()
    writer.close()
    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR, reference_history=HistoryReference(store, 0.0, 2000.0)),
                         NAMES, "space")
    assert agg.reference_streams == ["a"]
    assert agg.monitor.status("a").reference_mode == "history" and agg.monitor.status("a").reference_ready
    agg.commit(1, _partial(["b"] * 10, prefix="b"))
    status = agg.monitor.status("b")
    assert status.reference_mode == "history" and status.reference_ready and status.n_images == 10


def test_checkpoint_state_lives_in_the_history_store_even_behind_a_uri(tmp_path, monkeypatch):
    # a file:// root goes through the store's pyarrow filesystem layer, like s3:// would; nothing may be written
    # to a local folder named after the URI
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "hist"
    uri = root.as_uri()
    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR, history=uri), NAMES, "space")
    for seq in range(1, 4):
        agg.commit(seq, _partial(["cam"] * 40, prefix=f"b{seq}-", seed=seq))
    agg.save_checkpoint("job", {"offset": 120})
    agg.commit(4, _partial(["cam"] * 40, prefix="b4-", seed=4))
    agg.save_checkpoint("job", {"offset": 160})  # replaces the first state blob

    restored = AggregatorCore(AggregatorConfig(monitor=MONITOR, history=uri), NAMES, "space")
    cp = restored.load_checkpoint("job")
    assert cp["source"] == {"offset": 160} and restored.summary()["images"] == 160
    assert restored.monitor.status("cam").n_images == agg.monitor.status("cam").n_images == 160
    blobs = sorted(p.name for p in (root / "checkpoints").iterdir() if p.name.endswith(".npz"))
    assert blobs == [cp["monitor_state"]]  # the superseded state was deleted
    assert not (tmp_path / "file:").exists()


def test_the_aggregator_serves_build_info_and_process_metrics_on_loopback_by_default():
    import urllib.request

    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR, metrics_port=0, encoder="minilm"), NAMES, "space-7")
    try:
        host, port = agg.metrics_address()
        assert host == "127.0.0.1" and agg.exporter._server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'splice_build_info{concept_space="space-7",encoder="minilm",version="' in text
        assert "process_resident_memory_bytes " in text and "python_info{" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        agg.close()


def test_repeated_ids_are_duplicate_dead_letters_and_the_counts_add_up(tmp_path):
    """The probe: 600 rows with two repeated ids gave "counted 598, dead letters 0"."""
    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR, metrics_port=0, metrics_host="127.0.0.1",
                                          dead_letter=str(tmp_path / "dl"), recent_ids=100), NAMES, "space")
    try:
        first = _partial(["s"] * 4, ids=["i0", "i1", "i2", "i1"])  # repeats i1 within the batch
        r1 = agg.commit(1, first)
        assert (r1.counted, r1.dead_letters, r1.skipped_ids) == (3, 1, 1)
        r2 = agg.commit(2, _partial(["s"] * 3, prefix="i"), released=(1,))  # i0..i2 again, batch 1 acknowledged
        assert (r2.counted, r2.dead_letters) == (0, 3)
        r3 = agg.commit(3, _partial(["s"] * 2, prefix="j"), released=(2,))
        assert (r3.counted, r3.dead_letters) == (2, 0)
        s = agg.summary()
        assert s["images"] == 5 and s["dead_letters"] == {"duplicate": 4}
        assert s["images"] + s["dead_letters_total"] == 4 + 3 + 2  # every item sent is accounted for once
        details = [d.detail for d in agg.recent_dead_letters()]
        assert "earlier in the same batch" in details[0] and "in batch 1" in details[1]
        assert agg.metrics.registry.get_sample_value("splice_dead_letters_total",
                                                     {"stream": "s", "reason": "duplicate"}) == 4
    finally:
        agg.close()
    from workers.deadletter import read_parquet_dead_letters

    assert read_parquet_dead_letters(str(tmp_path / "dl")).column("reason").to_pylist() == ["duplicate"] * 4


def test_remembered_ids_are_bounded():
    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR, recent_ids=10), NAMES, "space")
    for seq in range(1, 21):
        agg.commit(seq, _partial(["s"] * 5, prefix=f"b{seq}-"), released=(seq - 1,) if seq > 1 else ())
    agg.release((20,))
    assert agg.ledger.recent_count == 10 and agg.ledger_size() == 0
    # an id older than the remembered ones is counted again: the memory is a bounded window, not every id
    assert agg.commit(21, _partial(["s"], prefix="b1-")).counted == 1
    assert agg.commit(22, _partial(["s"], prefix="b20-")).dead_letters == 1


def test_a_dead_letter_sink_that_fails_leaves_the_batch_uncounted_so_a_retry_counts_it_once(tmp_path):
    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR, dead_letter=str(tmp_path / "dl")), NAMES, "space")
    partial = _partial(["s"] * 3, ids=["i0", "i1", "i0"])  # one duplicate: a dead letter to write
    (tmp_path / "dl").rmdir()
    (tmp_path / "dl").write_bytes(b"")  # the sink cannot write
    try:
        agg.commit(1, partial)
    except PipelineError as exc:
        assert "cannot write 1 letter(s)" in str(exc)
    else:
        raise AssertionError("the commit should fail when its dead letters cannot be written")
    assert agg.summary()["images"] == 0 and agg.summary()["batches"] == 0 and agg.monitor.streams() == []
    (tmp_path / "dl").unlink()
    (tmp_path / "dl").mkdir()
    result = agg.commit(1, partial)  # the driver's retry of the same batch
    assert (result.duplicate, result.counted, result.dead_letters) == (False, 2, 1)
    assert agg.summary()["images"] == 2
