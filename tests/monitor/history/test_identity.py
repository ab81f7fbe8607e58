"""Tests for monitor.history.identity: a store keeps one concept space and refuses newer schema versions."""

from __future__ import annotations

import json

import pytest

from monitor.errors import ConfigError
from monitor.history.store import SCHEMA_VERSION, HistoryStore
from tests.monitor.history.helpers import NAMES, SPACE


def test_reopen_with_another_concept_space_names_both(store: HistoryStore) -> None:
    with pytest.raises(ConfigError, match=r"'test-space-v1'.*'other-space'"):
        HistoryStore(store.root, concept_space="other-space", concept_names=NAMES)
    with pytest.raises(ConfigError, match="differs first at index 7"):
        HistoryStore(store.root, concept_space=SPACE, concept_names=NAMES[:7] + ["x"] + NAMES[8:])
    reopened = HistoryStore.open(store.root)
    assert reopened.concept_space == SPACE and reopened.concept_names == NAMES
    with pytest.raises(ConfigError, match="no history store"):
        HistoryStore.open(store.root / "missing")


def test_newer_schema_version_is_refused(store: HistoryStore) -> None:
    meta = json.loads((store.root / "store.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    meta["schema_version"] = SCHEMA_VERSION + 1
    (store.root / "store.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="schema_version"):
        HistoryStore.open(store.root)
