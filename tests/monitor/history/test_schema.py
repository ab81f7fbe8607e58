"""Tests for monitor.history.schema: times as users write them, schema metadata in every file."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from monitor.history.store import SCHEMA_VERSION, HistoryStore, parse_time
from tests.monitor.history.helpers import SPACE, T0, make_window


def test_parse_time_accepts_iso_unix_and_rejects_garbage() -> None:
    assert parse_time("2026-03-01T01:00:00Z") == T0 + 3600
    assert parse_time("2026-03-01T02:00:00+01:00") == T0 + 3600
    assert parse_time(T0) == T0
    with pytest.raises(ValueError, match="start='yesterday-ish'"):
        parse_time("yesterday-ish", name="start")


def test_files_carry_schema_version_and_concept_space(store: HistoryStore) -> None:
    store.write_windows([make_window("s", T0, np.random.default_rng(7))])
    for f in store.root.rglob("*.parquet"):
        md = pq.read_schema(f).metadata
        assert md[b"splice_monitor.schema_version"] == str(SCHEMA_VERSION).encode()
        assert md[b"splice_monitor.concept_space"] == SPACE.encode()
