"""The commit ledger alone: batches applied once and in order whatever order they arrive in, early releases
honoured, duplicate ids reported, and memory bounded by what is in flight plus the recent-id window."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import workers.ledger
from workers.ledger import CommitLedger


def test_docstring_example_runs():
    assert doctest.testmod(workers.ledger, raise_on_error=True).attempted > 0


@pytest.mark.parametrize("seed", range(5))
def test_any_arrival_order_applies_each_batch_once_in_sequence_order(seed):
    ledger = CommitLedger()
    order = list(range(1, 31))
    np.random.default_rng(seed).shuffle(order)
    applied = []
    for seq in order:
        assert not ledger.seen(seq)
        applied += [s for s, _ in ledger.arrive(seq, f"p{seq}")]
        assert ledger.seen(seq)
    assert applied == list(range(1, 31)) and ledger.next_seq == 31


def test_a_batch_acknowledged_while_waiting_is_released_once_applied():
    ledger = CommitLedger()
    assert list(ledger.arrive(2, None)) == []
    ledger.release([2])  # the driver acknowledged it before batch 1 came
    for seq, _ in ledger.arrive(1, None):
        ledger.record(seq, [f"id{seq}"])
    ledger.release([1])
    assert ledger.size() == 0 and ledger.counted_in("id2") == 2


def test_drain_applies_what_waits_behind_a_gap_in_order():
    ledger = CommitLedger()
    for seq in (5, 3, 4):
        assert list(ledger.arrive(seq, None)) == []
    assert [s for s, _ in ledger.drain()] == [3, 4, 5] and ledger.next_seq == 6


def test_recent_ids_window_is_bounded():
    ledger = CommitLedger(recent_ids=3)
    for seq in range(1, 6):
        list(ledger.arrive(seq, None))
        ledger.record(seq, [f"id{seq}"])
        ledger.release([seq])
    assert ledger.recent_count == 3 and ledger.size() == 0
    assert ledger.counted_in("id5") == 5 and ledger.counted_in("id2") is None
    with pytest.raises(ValueError, match="recent_ids must be >= 0"):
        CommitLedger(recent_ids=-1)


def _stored_count_windows(order, duplicates, sizes, window, store):
    """Commit batches of ``sizes[seq - 1]`` items in ``order`` (each of ``duplicates`` committed a second time right
    after its first commit, and every batch released once its successor commits), flush, and return what the run
    says it closed and what the history store holds."""
    from monitor.drift.monitor import MonitorConfig, ReferenceConfig, WindowConfig
    from monitor.history.store import HistoryStore
    from monitor.records import ItemMeta, SparseCodes
    from workers.actors import AggregatorCore
    from workers.config import AggregatorConfig
    from workers.items import Partial

    names = [f"c{j}" for j in range(6)]
    monitor = MonitorConfig(window=WindowConfig(kind="count", size=window),
                            reference=ReferenceConfig(mode="fixed", n_images=window))
    agg = AggregatorCore(AggregatorConfig(monitor=monitor, history=store), names, "space")

    def partial(seq):
        n = sizes[seq - 1]
        rng = np.random.default_rng(seq)
        dense = np.where(rng.random((n, len(names))) < 0.4, rng.random((n, len(names))), 0.0)
        codes = SparseCodes.from_dense(dense, fidelity=np.full(n, 0.9), l1=0.25)
        return Partial(codes=codes, items=[ItemMeta(id=f"{seq}-{k}", timestamp=5.0) for k in range(n)])

    closed = 0
    released = []
    for seq in order:
        for _ in range(2 if seq in duplicates else 1):
            closed += agg.commit(seq, partial(seq), released=tuple(released)).windows_closed
            released = []
        if seq > 1:
            released.append(seq - 1)  # the driver acknowledges behind the commits (an early release waits too)
    agg.flush()
    summary = agg.summary()
    stored = HistoryStore.open(store).read_windows()
    return closed, summary, [(w.index, w.n_images, w.presence.tolist()) for w in stored]


def test_count_windows_in_history_equal_the_windows_closed_for_any_commit_order():
    """Issue 11's property: whatever order batch commits arrive in (a retried batch commits late; the ledger
    reorders), with repeated commits among them, the history store holds exactly the count windows the run says it
    closed, numbered 0..k-1 by position, each full but the last, and the same windows as the commits in order.
    Nothing at all in a window's timestamp tells them apart: every item carries the same time."""
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @st.composite
    def runs(draw):
        n = draw(st.integers(1, 10))
        sizes = draw(st.lists(st.integers(1, 9), min_size=n, max_size=n))
        order = draw(st.permutations(range(1, n + 1)))
        duplicates = draw(st.sets(st.sampled_from(range(1, n + 1)), max_size=3))
        return sizes, order, duplicates, draw(st.integers(1, 12))

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(runs())
    def check(run):
        sizes, order, duplicates, window = run
        with tempfile.TemporaryDirectory() as shuffled, tempfile.TemporaryDirectory() as in_order:
            closed, summary, stored = _stored_count_windows(order, duplicates, sizes, window, shuffled)
            total = sum(sizes)
            assert summary["images"] == total
            assert len(stored) == summary["windows_closed"] == -(-total // window)
            assert closed <= summary["windows_closed"]  # the rest were closed by the flush
            assert [i for i, _, _ in stored] == list(range(len(stored)))
            assert [n for _, n, _ in stored] == [window] * (total // window) + ([total % window] if total % window
                                                                                 else [])
            assert stored == _stored_count_windows(sorted(order), set(), sizes, window, in_order)[2]

    check()


class _OneIdAtATime:
    """The ledger's id bookkeeping written the plain way, one id per step: what the bulk operations must equal."""

    def __init__(self, recent_ids: int) -> None:
        self.recent_ids, self.open, self.open_ids, self.recent = recent_ids, {}, {}, {}

    def record(self, seq, ids):
        self.open[seq] = list(ids)
        for i in ids:
            self.open_ids[i] = seq

    def forget(self, seq):
        for i in self.open.pop(seq, ()):
            if self.open_ids.get(i) == seq:
                del self.open_ids[i]
                self.recent.pop(i, None)
                self.recent[i] = seq
        while len(self.recent) > self.recent_ids:
            del self.recent[next(iter(self.recent))]


@pytest.mark.parametrize("seed", range(4))
def test_bulk_id_bookkeeping_equals_one_id_at_a_time(seed):
    """Batches recorded and released in random order, ids repeating across open batches (so some ids are held by
    a later batch when an earlier one is released): the open ids and the recent window (content and eviction
    order) match the plain per-id algorithm at every step."""
    rng = np.random.default_rng(seed)
    ledger, plain = CommitLedger(recent_ids=50), _OneIdAtATime(50)
    unreleased = []
    for seq in range(1, 80):
        ids = list(dict.fromkeys(f"id{k}" for k in rng.integers(0, 300, size=rng.integers(1, 25))))
        assert [s for s, _ in ledger.arrive(seq, None)] == [seq]
        ledger.record(seq, ids)
        plain.record(seq, ids)
        unreleased.append(seq)
        rng.shuffle(unreleased)
        k = int(rng.integers(0, 4))
        done, unreleased = unreleased[:k], unreleased[k:]
        ledger.release(done)
        for s in done:
            plain.forget(s)
        state = ledger.state()
        assert {s: ids for s, ids in state["open"]} == plain.open
        assert [tuple(x) for x in state["recent"]] == list(plain.recent.items())
        assert ledger._open_ids == plain.open_ids


def test_admit_reports_repeated_ids_and_the_fast_path_agrees_with_the_slow_one():
    from workers.items import DeadLetter, ItemColumns

    ledger = CommitLedger()
    cols = ItemColumns(["a", "b", "c"], [1.0, 2.0, 3.0], [0, 1, 0], ["s", "t"])
    rows, dead, ids = ledger.admit(cols, [])
    assert rows is None and dead == [] and ids == ["a", "b", "c"]  # every id new: all rows
    list(ledger.arrive(1, None))
    ledger.record(1, ids)
    letter = DeadLetter(item_id="d", stream="s", timestamp=4.0, reason="empty", detail="payload is empty")
    again = ItemColumns(["x", "b", "x", "y"], [5.0, 6.0, 7.0, 8.0], [0, 1, 1, 0], ["s", "t"])
    rows, dead, ids = ledger.admit(again, [letter])
    assert rows.tolist() == [0, 3] and ids == ["x", "y", "d"]
    assert [(d.item_id, d.stream, d.timestamp, d.reason) for d in dead] == [
        ("b", "t", 6.0, "duplicate"), ("x", "t", 7.0, "duplicate"), ("d", "s", 4.0, "empty")]
    assert "in batch 1" in dead[0].detail and "earlier in the same batch" in dead[1].detail
    # a batch with no repeat but a dead letter of its own takes the slow path and still counts every row
    rows, dead, ids = ledger.admit(ItemColumns(["p", "q"], [1.0, 2.0], [0, 0], ["s"]), [letter])
    assert rows.tolist() == [0, 1] and dead == [letter] and ids == ["p", "q", "d"]
