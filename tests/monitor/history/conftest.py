"""Fixtures of the history tests (builders live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.history.store import HistoryStore
from tests.monitor.history.helpers import NAMES, SPACE


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "hist", concept_space=SPACE, concept_names=NAMES)
