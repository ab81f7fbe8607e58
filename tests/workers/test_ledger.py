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
