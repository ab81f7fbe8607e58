"""MonitorMetrics: counters equal dense recomputation, histograms, bounded exported set, alarm states, gauges."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.errors import DEAD_LETTER_REASONS, ConfigError
from monitor.metrics.families import FIDELITY_BUCKETS, METRICS, MonitorMetrics, OVER_LIMIT_STREAM
from monitor.records import Alarm, SparseCodes, WindowSummary

DOCS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


def _codes(rng, n, c, density=0.05, fid=0.8):
    w = np.where(rng.random((n, c)) < density, rng.uniform(0.01, 1.0, (n, c)), 0.0)
    return SparseCodes.from_dense(w, fidelity=np.clip(rng.normal(fid, 0.05, n), 0, 1), l1=0.25)


def _summary(stream, codes_list, c, start=0.0, end=60.0):
    dense = np.concatenate([k.to_dense() for k in codes_list]).astype(np.float64)
    fid = np.concatenate([k.fidelity for k in codes_list]).astype(np.float64)
    return WindowSummary(stream, start, end, len(dense), dense.sum(0), (dense ** 2).sum(0), (dense > 0).sum(0),
                         fidelity_sum=float(fid.sum()))


def _alarm(stream, j, name, state="firing", kind="prevalence", score=10.0):
    return Alarm(stream, kind, "up", j, name, 0.02, 0.19, 0.01, 0.05, 1.0, score, 1e-9, 0.0, 60.0, state=state)


def _concept_labels(reg, metric, stream):
    return {s.labels["concept"] for f in reg.collect() for s in f.samples
            if s.name == metric and s.labels.get("stream") == stream}


@pytest.fixture
def names():
    return [f"c{i}" for i in range(50)]


def test_counters_equal_dense_recount_over_batches(names):
    rng = np.random.default_rng(0)
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg, max_concepts_per_stream=50)
    batches = [_codes(rng, 17, 50) for _ in range(5)]
    for b in batches:
        m.observe_batch("s", b)
    dense = np.concatenate([b.to_dense() for b in batches]).astype(np.float64)
    assert reg.get_sample_value("splice_images_total", {"stream": "s"}) == 85
    for j in (0, 7, 49):
        lab = {"stream": "s", "concept": names[j]}
        assert reg.get_sample_value("splice_concept_presence_total", lab) == (dense[:, j] > 0).sum()
        assert reg.get_sample_value("splice_concept_weight_total", lab) == pytest.approx(dense[:, j].sum())


def test_histograms_are_cumulative_and_upper_inclusive(names):
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg)
    w = np.zeros((3, 50))
    w[0, :3] = 0.1
    w[1, :5] = 0.1
    codes = SparseCodes.from_dense(w, fidelity=np.array([0.5, 0.8, 0.95]), l1=0.25)
    m.observe_batch("s", codes, latency_s=0.05)
    get = reg.get_sample_value
    assert get("splice_fidelity_cosine_bucket", {"stream": "s", "le": "0.5"}) == 1  # 0.5 <= 0.5
    assert get("splice_fidelity_cosine_bucket", {"stream": "s", "le": "0.8"}) == 2
    assert get("splice_fidelity_cosine_bucket", {"stream": "s", "le": "+Inf"}) == 3
    assert get("splice_fidelity_cosine_sum", {"stream": "s"}) == pytest.approx(2.25)
    assert get("splice_l0_concepts_bucket", {"stream": "s", "le": "0.0"}) == 1  # the empty code
    assert get("splice_l0_concepts_bucket", {"stream": "s", "le": "4.0"}) == 2
    assert get("splice_l0_concepts_count", {"stream": "s"}) == 3
    assert get("splice_l0_concepts_sum", {"stream": "s"}) == 8
    assert get("splice_batch_latency_seconds_bucket", {"stream": "s", "le": "0.025"}) == 0
    assert get("splice_batch_latency_seconds_bucket", {"stream": "s", "le": "0.05"}) == 1
    assert len(FIDELITY_BUCKETS) + 1 == len([s for f in reg.collect() for s in f.samples
                                             if s.name == "splice_fidelity_cosine_bucket"])


def test_dead_letters_start_at_zero_for_every_reason_and_reject_unknown(names):
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg)
    m.observe_dead_letter("s", "truncated", 3)
    for reason in DEAD_LETTER_REASONS:
        expected = 3 if reason == "truncated" else 0
        assert reg.get_sample_value("splice_dead_letters_total", {"stream": "s", "reason": reason}) == expected
    with pytest.raises(ValueError, match=r"reason must be one of .*'weird'"):
        m.observe_dead_letter("s", "weird")
    with pytest.raises(ValueError, match="n must be an integer >= 0, got -1"):
        m.observe_nonconverged("s", -1)


def test_exported_set_is_bounded_whatever_the_data():
    rng = np.random.default_rng(1)
    names = [f"w{i}" for i in range(2000)]
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg, max_concepts_per_stream=30, top_k=5)
    batches = [_codes(rng, 64, 2000, density=0.2) for _ in range(3)]
    for b in batches:
        m.observe_batch("s", b)
    assert len(_concept_labels(reg, "splice_concept_presence_total", "s")) == 30  # before any window
    cur = _summary("s", batches, 2000)
    m.observe_window("s", cur, cur, concept_scores=rng.random(2000), drift_score=0.1,
                     alarms=[_alarm("s", j, names[j]) for j in range(40)])  # more alarms than the budget
    for metric in ("splice_concept_presence_total", "splice_concept_weight_total",
                   "splice_concept_prevalence_ratio", "splice_concept_drift_score", "splice_concept_alarm_firing"):
        assert len(_concept_labels(reg, metric, "s")) == 30, metric
    assert reg.get_sample_value("splice_exported_concepts", {"stream": "s"}) == 30


def test_exported_set_holds_alarmed_and_top_drifting_before_prevalent(names):
    rng = np.random.default_rng(2)
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg, max_concepts_per_stream=8, top_k=3)
    codes = _codes(rng, 200, 50, density=0.3)
    m.observe_batch("s", codes)
    cur = _summary("s", [codes], 50)
    cur.presence[[40, 41, 42, 43]] = 0  # rare now
    scores = np.zeros(50)
    scores[[41, 42, 43]] = [5.0, 7.0, 6.0]
    m.observe_window("s", cur, cur, concept_scores=scores, drift_score=1.0, alarms=[_alarm("s", 40, "c40")])
    exported = set(m.exported_concepts("s"))
    assert {"c40", "c41", "c42", "c43"} <= exported and len(exported) == 8
    # topk() over the per-concept score is the top drifting list: the top-K are always exported
    scored = sorted(((s.value, s.labels["concept"]) for f in reg.collect() for s in f.samples
                     if s.name == "splice_concept_drift_score"), reverse=True)
    assert scored[:3] == [(7.0, "c42"), (6.0, "c43"), (5.0, "c41")]


def test_no_series_carries_a_rank_label_so_reranking_creates_no_new_series(names):
    """Ranks change every window; a rank label would mint a new series per (rank, concept) pair. Two windows with
    the top concepts swapped must expose exactly the same series (label sets), only with other values."""
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg, max_concepts_per_stream=6, top_k=3)
    rng = np.random.default_rng(4)
    codes = _codes(rng, 100, 50, density=0.3)
    m.observe_batch("s", codes)
    cur = _summary("s", [codes], 50)

    def series(scores):
        m.observe_window("s", cur, cur, concept_scores=scores, drift_score=1.0, alarms=[])
        return {(s.name, tuple(sorted(s.labels.items()))) for f in reg.collect() for s in f.samples}

    a = np.zeros(50)
    a[[41, 42, 43]] = [5.0, 7.0, 6.0]
    first = series(a)
    b = np.zeros(50)
    b[[41, 42, 43]] = [7.0, 5.0, 6.0]  # same concepts, ranks shuffled
    assert series(b) == first
    assert not any("rank" in dict(labels) for _, labels in first)


def test_concept_entering_the_exported_set_reports_its_full_count(names):
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg, max_concepts_per_stream=2, top_k=1)
    w = np.zeros((10, 50))
    w[:, 0] = w[:, 1] = 0.5  # c0, c1 everywhere
    w[:3, 9] = 0.2  # c9 in 3 images: not exported at first
    codes = SparseCodes.from_dense(w, fidelity=np.ones(10), l1=0.25)
    m.observe_batch("s", codes)
    assert reg.get_sample_value("splice_concept_presence_total", {"stream": "s", "concept": "c9"}) is None
    cur = _summary("s", [codes], 50)
    scores = np.zeros(50)
    scores[9] = 9.0
    m.observe_window("s", cur, cur, concept_scores=scores, drift_score=None, alarms=[])
    assert reg.get_sample_value("splice_concept_presence_total", {"stream": "s", "concept": "c9"}) == 3
    assert reg.get_sample_value("splice_concept_weight_total", {"stream": "s", "concept": "c9"}) == \
        pytest.approx(0.6)


def test_alarm_fires_until_resolved_and_counts_by_kind(names):
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg, max_concepts_per_stream=10, top_k=2)
    rng = np.random.default_rng(3)
    codes = _codes(rng, 50, 50, density=0.3)
    m.observe_batch("s", codes)
    cur = _summary("s", [codes], 50)
    stream_alarm = Alarm("s", "stream", "none", -1, "", np.nan, np.nan, np.nan, np.nan, 2.0, 2.0, np.nan, 0, 60)

    def firing(name):
        return reg.get_sample_value("splice_concept_alarm_firing", {"stream": "s", "concept": name})

    m.observe_window("s", cur, cur, concept_scores=None, drift_score=2.0,
                     alarms=[_alarm("s", 5, "c5"), stream_alarm])
    assert firing("c5") == 1
    assert reg.get_sample_value("splice_alarms_firing", {"stream": "s", "kind": "prevalence"}) == 1
    assert reg.get_sample_value("splice_alarms_firing", {"stream": "s", "kind": "stream"}) == 1
    m.observe_window("s", cur, cur, concept_scores=None, drift_score=2.0, alarms=[])  # still active
    assert firing("c5") == 1
    m.observe_window("s", cur, cur, concept_scores=None, drift_score=0.1,
                     alarms=[_alarm("s", 5, "c5", state="resolved")])
    assert firing("c5") in (0, None)
    assert reg.get_sample_value("splice_alarms_firing", {"stream": "s", "kind": "prevalence"}) == 0
    assert reg.get_sample_value("splice_alarms_firing", {"stream": "s", "kind": "stream"}) == 1
    with pytest.raises(ValueError, match="alarm for stream 'other'"):
        m.observe_window("s", cur, cur, concept_scores=None, drift_score=None, alarms=[_alarm("other", 1, "c1")])


def test_window_gauges_report_reference_and_current(names):
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg)
    c = 50
    ref = WindowSummary("s", 0, 60, 100, np.full(c, 2.0), np.zeros(c), np.full(c, 2), fidelity_sum=82.0)
    cur = WindowSummary("s", 60, 120, 50, np.full(c, 5.0), np.zeros(c), np.full(c, 10), fidelity_sum=30.0)
    cur.presence[0] = 25
    m.observe_batch("s", SparseCodes.from_dense(np.full((1, c), 0.1), fidelity=[0.9], l1=0.25))
    m.observe_window("s", cur, ref, concept_scores=None, drift_score=None, alarms=[])
    m.set_reference_time("s", 1234.5)
    g = reg.get_sample_value
    assert g("splice_concept_prevalence_ratio", {"stream": "s", "concept": "c0", "window": "current"}) == 0.5
    assert g("splice_concept_prevalence_ratio", {"stream": "s", "concept": "c0", "window": "reference"}) == 0.02
    assert g("splice_concept_mean_activation", {"stream": "s", "concept": "c3", "window": "current"}) == 0.1
    assert g("splice_window_images", {"stream": "s", "window": "reference"}) == 100
    assert g("splice_window_fidelity_mean", {"stream": "s", "window": "reference"}) == pytest.approx(0.82)
    assert g("splice_window_fidelity_mean", {"stream": "s", "window": "current"}) == pytest.approx(0.6)
    assert g("splice_window_end_timestamp_seconds", {"stream": "s"}) == 120
    assert g("splice_reference_timestamp_seconds", {"stream": "s"}) == 1234.5
    # no concept score given: the exported set still leads with the largest |current - reference| change, c0
    assert "c0" in m.exported_concepts("s")


def test_bad_input_is_rejected_with_parameter_and_value(names):
    reg = CollectorRegistry()
    with pytest.raises(ConfigError, match=r"duplicates: \['a'\]"):
        MonitorMetrics(["a", "b", "a"], registry=reg)
    with pytest.raises(ConfigError, match="top_k"):
        MonitorMetrics(names, registry=reg, max_concepts_per_stream=3, top_k=10)
    m = MonitorMetrics(names, registry=reg, max_streams=2)
    codes = SparseCodes.from_dense(np.zeros((1, 49)), fidelity=[1.0], l1=0.25)
    with pytest.raises(ValueError, match="codes.n_concepts must equal the metrics' concept count 50, got 49"):
        m.observe_batch("s", codes)
    ok = SparseCodes.from_dense(np.zeros((1, 50)), fidelity=[1.0], l1=0.25)
    with pytest.raises(ValueError, match="latency_s must be a finite number >= 0"):
        m.observe_batch("s", ok, latency_s=float("nan"))
    assert m.can_accept("a") and m.streams == []  # asking creates no state
    m.observe_batch("a", ok)
    m.observe_batch("b", ok)
    assert m.can_accept("a") and m.can_accept("b") and not m.can_accept("c")
    with pytest.raises(ConfigError, match="max_streams=2"):
        m.observe_batch("c", ok)
    assert not m.can_accept("c") and sorted(m.streams) == ["a", "b"]
    cur = WindowSummary("a", 0, 1, 1, np.zeros(50), np.zeros(50), np.zeros(50, dtype=np.int64))
    with pytest.raises(ValueError, match=r"concept_scores must have shape \(50,\), got \(3,\)"):
        m.observe_window("a", cur, None, concept_scores=np.zeros(3), drift_score=None, alarms=[])


def test_registry_rejects_a_second_collector_with_the_same_names(names):
    reg = CollectorRegistry()
    MonitorMetrics(names, registry=reg)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        MonitorMetrics(names, registry=reg)


def test_scrape_while_observing_from_another_thread(names):
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg)
    rng = np.random.default_rng(4)
    batches = [_codes(rng, 8, 50) for _ in range(200)]

    def feed():
        for b in batches:
            m.observe_batch("s", b)

    t = threading.Thread(target=feed)
    t.start()
    while t.is_alive():
        text = generate_latest(reg).decode()
        list(text_string_to_metric_families(text))  # parses: no torn or duplicate samples
    t.join()
    assert reg.get_sample_value("splice_images_total", {"stream": "s"}) == 1600


def _series_count(reg) -> int:
    return sum(len(f.samples) for f in reg.collect())


def test_default_series_count_for_10000_concepts_matches_docs():
    rng = np.random.default_rng(5)
    names = [f"w{i}" for i in range(10_000)]
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg)
    for stream in ("camera-1", "camera-2"):
        codes = _codes(rng, 400, 10_000, density=0.003)
        m.observe_batch(stream, codes, latency_s=0.1)
        cur = _summary(stream, [codes], 10_000)
        m.observe_window(stream, cur, cur, concept_scores=rng.random(10_000), drift_score=0.5,
                         alarms=[_alarm(stream, 3, "w3")])
        m.set_reference_time(stream, 0.0)
        m.set_reference_fill(stream, 1.0)
    total = _series_count(reg)
    per_stream = (total - 2) // 2
    text = DOCS.read_text()
    stated = re.search(r"<!-- series-per-stream: (\d+) -->", text)
    assert stated and int(stated.group(1)) == per_stream, f"docs/metrics.md must state {per_stream}"
    assert f"{total:,}" in text, f"docs/metrics.md must state the 2-stream total {total:,}"


def test_every_metric_is_documented():
    text = DOCS.read_text()
    for spec in METRICS:
        assert f"`{spec.name}`" in text, f"{spec.name} missing from docs/metrics.md"


def test_module_docstring_example_runs():
    import doctest

    import monitor.metrics.families

    assert doctest.testmod(monitor.metrics.families).failed == 0


def test_drift_monitor_alarm_transitions_drive_alarm_gauges(names):
    """Contract with monitor.drift.detectors: AlarmBook.step() transitions passed as-is keep the gauge right."""
    import monitor.drift.detectors as drift
    import monitor.drift.stats as stats
    rng = np.random.default_rng(6)
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg, max_concepts_per_stream=20, top_k=5)
    test, book = drift.ConceptDriftTest(), drift.AlarmBook("s", names)

    def window(p0):
        w = stats.WindowStats(50)
        p = np.full(50, 0.1)
        p[0] = p0
        dense = np.where(rng.random((2000, 50)) < p, rng.uniform(0.05, 0.5, (2000, 50)), 0.0)
        codes = SparseCodes.from_dense(dense, fidelity=np.full(2000, 0.8), l1=0.25)
        w.update(codes)
        m.observe_batch("s", codes)
        return w

    ref = window(0.02)
    firing = []
    for p0 in (0.19, 0.19, 0.02, 0.02, 0.02):
        cur = window(p0)
        step = test.run(ref, cur)
        alarms = book.step(step, (0.0, 1.0), (-1.0, 0.0))
        m.observe_window("s", cur.to_summary("s", 0.0, 1.0), ref.to_summary("s", -1.0, 0.0),
                         concept_scores=step.concept_scores, drift_score=step.stream_score, alarms=alarms)
        firing.append(reg.get_sample_value("splice_concept_alarm_firing", {"stream": "s", "concept": "c0"}))
    assert firing[:2] == [1.0, 1.0] and firing[-1] in (0.0, None), firing  # None: c0 left the exported set
    assert book.active == []
    assert reg.get_sample_value("splice_alarms_firing", {"stream": "s", "kind": "prevalence"}) == 0


def test_state_round_trip_keeps_every_series(names):
    rng = np.random.default_rng(7)
    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg, max_concepts_per_stream=10, top_k=3)
    codes = _codes(rng, 100, 50, density=0.2)
    m.observe_batch("s", codes, latency_s=0.2)
    m.observe_dead_letter("s", "empty", 2)
    m.set_queue_depth(7)
    cur = _summary("s", [codes], 50)
    m.observe_window("s", cur, cur, concept_scores=rng.random(50), drift_score=0.3,
                     alarms=[_alarm("s", 4, "c4")])
    m.set_reference_time("s", 99.0)
    reg2 = CollectorRegistry()
    restored = MonitorMetrics(names, registry=reg2, max_concepts_per_stream=10, top_k=3)
    restored.load_state_dict(m.state_dict())
    assert generate_latest(reg2) == generate_latest(reg)
    restored.observe_batch("s", codes)  # counters continue from the saved values
    assert reg2.get_sample_value("splice_images_total", {"stream": "s"}) == 200
    with pytest.raises(ConfigError, match="different concept space"):
        MonitorMetrics(names[:10], registry=None).load_state_dict(m.state_dict())


def test_dead_letters_of_streams_beyond_the_limit_share_one_label_value():
    reg = CollectorRegistry()
    m = MonitorMetrics(["a", "b"], registry=reg, max_streams=2)
    m.observe_dead_letter("s1", "bad_text")
    m.observe_dead_letter("s2", "bad_text", n=2)
    for k in range(5):  # five refused streams: no new label values
        m.observe_dead_letter(f"extra-{k}", "stream_limit", n=3)
    m.observe_dead_letter("extra-0", "duplicate")
    assert sorted(m.streams) == ["s1", "s2"]
    get = reg.get_sample_value
    assert get("splice_dead_letters_total", {"stream": "s2", "reason": "bad_text"}) == 2
    assert get("splice_dead_letters_total", {"stream": OVER_LIMIT_STREAM, "reason": "stream_limit"}) == 15
    assert get("splice_dead_letters_total", {"stream": OVER_LIMIT_STREAM, "reason": "duplicate"}) == 1
    assert get("splice_dead_letters_total", {"stream": OVER_LIMIT_STREAM, "reason": "bad_text"}) is None


def test_the_newest_firing_alarm_says_when_it_fired(names):
    import dataclasses

    reg = CollectorRegistry()
    m = MonitorMetrics(names, registry=reg, max_concepts_per_stream=10, top_k=2)
    codes = _codes(np.random.default_rng(5), 50, 50, density=0.3)
    m.observe_batch("s", codes)
    cur = _summary("s", [codes], 50)
    older = dataclasses.replace(_alarm("s", 5, "c5"), event_time=1000.5, item_offset=20_100)
    newer = dataclasses.replace(_alarm("s", 7, "c7"), event_time=1010.0, item_offset=20_200)
    m.observe_window("s", cur, cur, concept_scores=None, drift_score=1.0, alarms=[older, newer])
    labels = {"stream": "s", "kind": "prevalence"}
    assert reg.get_sample_value("splice_alarm_fired_timestamp_seconds", labels) == 1010.0
    assert reg.get_sample_value("splice_alarm_fired_offset_items", labels) == 20_200
    m.observe_window("s", cur, cur, concept_scores=None, drift_score=1.0,
                     alarms=[dataclasses.replace(newer, state="resolved")])
    assert reg.get_sample_value("splice_alarm_fired_offset_items", labels) == 20_100
