"""Tests for monitor.history.checkpoints: job records replaced atomically, names validated."""

from __future__ import annotations

import pytest

from monitor.history.store import HistoryStore


def test_checkpoints_round_trip_atomically(store: HistoryStore) -> None:
    assert store.get_checkpoint("backfill-archive") is None
    store.set_checkpoint("backfill-archive", {"file": 3, "row": 1200})
    store.set_checkpoint("backfill-archive", {"file": 4, "row": 0})
    assert store.get_checkpoint("backfill-archive") == {"file": 4, "row": 0}
    assert store.list_checkpoints() == ["backfill-archive"]
    assert not list((store.root / "checkpoints").glob(".*"))
    store.clear_checkpoint("backfill-archive")
    assert store.get_checkpoint("backfill-archive") is None
    with pytest.raises(ValueError, match="job_id='../evil'"):
        store.set_checkpoint("../evil", {})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        store.set_checkpoint("job", {"x": object()})
