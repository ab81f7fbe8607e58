"""The driver's acknowledgement gate with real sources: nothing is acknowledged before a checkpoint covers it, a
checkpoint acknowledges exactly what it covers, and redelivered items a checkpoint already counted are skipped."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.acks import AckGate
from workers.sources import ParquetSource, open_source


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _parquet(tmp_path, n=10):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"c{i}" for i in range(n)]}), path)
    return ParquetSource(str(path), text_column="text")


def test_only_batches_a_checkpoint_covers_are_acknowledged(tmp_path):
    src = _parquet(tmp_path)
    clock = _Clock()
    gate = AckGate(src, every_s=5, max_held=10, clock=clock)
    batches = [src.read(2) for _ in range(4)]
    for b in batches:
        gate.hold(b.seq, b, proc_ref=None)
    assert not gate.due() and src.checkpoint() is None  # held, not acknowledged
    clock.t = 5.0
    assert gate.due()
    assert gate.positions()[3] == {"file": 0, "row": 6}
    assert [seq for seq, _ in gate.covered(3)] == [1, 2, 3]
    assert src.checkpoint() == {"file": 0, "row": 6} and list(gate.held) == [4]
    assert [seq for seq, _ in gate.replay(3)] == [4]
    assert not gate.due()  # the clock restarted at the checkpoint


def test_holding_max_held_batches_forces_a_checkpoint_and_stops_reading(tmp_path):
    src = _parquet(tmp_path)
    gate = AckGate(src, every_s=3600, max_held=2, clock=_Clock())
    gate.hold(1, src.read(2), None)
    assert not gate.full()
    gate.hold(2, src.read(2), None)
    assert gate.full() and gate.due()


def test_redelivered_items_already_counted_are_skipped_once(redis_url, redis_client):
    for i in range(4):
        redis_client.xadd("s", {"text": f"c{i}"})
    first = open_source(f"{redis_url}?stream=s&group=g&consumer=c1")
    batch = first.read(4, timeout_s=0.1)
    counted = [it.ref for it in batch.items[:3]]  # a checkpoint counted these; the driver died before XACK
    first.close()
    again = open_source(f"{redis_url}?stream=s&group=g&consumer=c1&drain=1")
    gate = AckGate(again, skip=counted)
    redelivered = again.read(4, timeout_s=0.1)
    kept = gate.filter(redelivered)
    assert [it.ref for it in kept.items] == [batch.items[3].ref] and gate.skipped == 3 and not gate.skip
    assert kept.token == redelivered.token  # the skipped entries are still acknowledged with the batch


def test_gate_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="max_held >= 1"):
        AckGate(_parquet(tmp_path), max_held=0)


def test_batches_whose_commit_reply_is_still_in_flight_are_offered_to_the_checkpoint(tmp_path):
    """The aggregator may have applied a batch whose reply the driver has not read yet: the checkpoint then holds
    it, so its position and references must be on offer too (else a rerun counts it again as duplicates)."""
    from types import SimpleNamespace

    src = _parquet(tmp_path)
    gate = AckGate(src, clock=_Clock())
    b1, b2 = src.read(2), src.read(2)
    gate.hold(1, b1, None)
    flights = {2: SimpleNamespace(batch=b2)}
    assert gate.positions(flights) == {1: {"file": 0, "row": 2}, 2: {"file": 0, "row": 4}}
    assert gate.refs(flights)[2] == [it.ref for it in b2.items] and len(gate.refs(flights)[2]) == 2
    assert [seq for seq, _ in gate.covered(2)] == [1]  # only what the driver holds is acknowledged now
