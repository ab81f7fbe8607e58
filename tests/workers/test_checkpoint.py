"""The aggregator's checkpoint as one unit: monitor state, ledger and counters saved together and restored either by
Ray restarting the actor under the same driver (numbering kept: the driver commits again what came after the
checkpoint) or by a new run (numbering from 1, counted ids still known as duplicates, redelivered refs kept)."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.drift.monitor import MonitorConfig, ReferenceConfig, WindowConfig
from monitor.errors import ConfigError
from monitor.records import ItemMeta, SparseCodes
from workers.actors import AggregatorConfig, AggregatorCore
from workers.items import Partial

NAMES = [f"concept{j}" for j in range(12)]
MONITOR = MonitorConfig(window=WindowConfig(kind="count", size=30), reference=ReferenceConfig(mode="fixed", n_images=40))


def _partial(seq: int, n: int = 10) -> Partial:
    rng = np.random.default_rng(seq)
    dense = np.where(rng.random((n, len(NAMES))) < 0.3, rng.random((n, len(NAMES))), 0.0)
    codes = SparseCodes.from_dense(dense, fidelity=np.full(n, 0.9), l1=0.25)
    return Partial(codes=codes, items=[ItemMeta(id=f"b{seq}-{k}", timestamp=1000.0 + 10 * seq + k, stream="cam")
                                       for k in range(n)])


def _core(store: str) -> AggregatorCore:
    return AggregatorCore(AggregatorConfig(monitor=MONITOR, history=store), NAMES, "space")


def test_a_restarted_aggregator_of_the_same_run_continues_where_the_checkpoint_ends(tmp_path):
    store = str(tmp_path / "h")
    live = _core(store)
    for seq in (1, 2, 4, 3, 5):  # 4 waits for 3
        live.commit(seq, _partial(seq))
    saved = live.save_checkpoint("job", positions={s: {"row": 10 * s} for s in range(1, 7)},
                                 refs={s: [f"ref{s}"] for s in range(1, 7)}, run="run-A")
    assert saved == {"through_seq": 5}
    # batch 6 commits after the checkpoint, then the actor dies: the restarted one must take 6 again, and only 6
    live.commit(6, _partial(6))
    restarted = _core(store)
    cp = restarted.load_checkpoint("job", run="run-A")
    assert cp["source"] == {"row": 50} and cp["through_seq"] == 5
    assert cp["redelivered_refs"] == [f"ref{s}" for s in range(1, 6)]
    assert restarted.commit(5, _partial(5)).duplicate
    assert restarted.commit(6, _partial(6)).counted == 10
    for core in (live, restarted):
        core.flush()
    assert restarted.summary()["images"] == live.summary()["images"] == 60
    assert restarted.summary()["windows_closed"] == live.summary()["windows_closed"]
    assert restarted.monitor.status("cam").n_images == live.monitor.status("cam").n_images


def test_a_new_run_numbers_from_one_and_still_knows_the_counted_ids(tmp_path):
    store = str(tmp_path / "h")
    first = _core(store)
    for seq in (1, 2, 3):
        first.commit(seq, _partial(seq))
    first.save_checkpoint("job", positions={3: {"row": 30}}, run="run-A")
    second = _core(store)
    second.load_checkpoint("job", run="run-B")
    assert second.ledger.next_seq == 1 and second.summary()["images"] == 30
    again = second.commit(1, _partial(3))  # a new run's batch 1 that repeats ids counted before the restart
    assert (again.counted, again.dead_letters) == (0, 10)
    fresh = second.commit(2, _partial(7))
    assert fresh.counted == 10 and second.summary()["images"] == 40


def test_nothing_acknowledged_since_keeps_the_previous_position(tmp_path):
    store = str(tmp_path / "h")
    core = _core(store)
    core.commit(1, _partial(1))
    core.save_checkpoint("job", positions={1: {"row": 10}})
    core.commit(2, _partial(2))
    core.save_checkpoint("job")  # no position known: must not reset the resume position to "the start"
    assert _core(store).load_checkpoint("job")["source"] == {"row": 10}


def test_a_checkpoint_naming_a_missing_state_file_is_a_clear_error(tmp_path):
    store = tmp_path / "h"
    core = _core(str(store))
    core.commit(1, _partial(1))
    core.save_checkpoint("job", positions={1: {"row": 10}})
    for p in (store / "checkpoints").iterdir():
        if ".ledger-" in p.name:
            p.unlink()
    with pytest.raises(ConfigError, match="names ledger state .* does not hold; rerun with --restart"):
        _core(str(store)).load_checkpoint("job")


def _core_with_letters(store: str, dead: str) -> AggregatorCore:
    return AggregatorCore(AggregatorConfig(monitor=MONITOR, history=store, dead_letter=dead), NAMES, "space")


def _with_letters(seq: int) -> Partial:
    from workers.items import DeadLetter

    part = _partial(seq)
    return Partial(codes=part.codes, items=part.items, dead_letters=[
        DeadLetter(item_id=f"bad{seq}-{k}", stream="cam", timestamp=1.0, reason="bad_text", detail="caption is empty",
                   ref=f"file.parquet#row={seq * 100 + k}") for k in range(2)])


def _letter_ids(dead: str) -> list[str]:
    from workers.deadletter import read_parquet_dead_letters

    return sorted(read_parquet_dead_letters(dead)["item_id"].to_pylist())


def test_dead_letters_of_a_checkpointed_run_are_published_once_whatever_crashes_and_replays(tmp_path, monkeypatch):
    """Issue 11: letters of batches replayed after a crash were written twice. Now they wait for the checkpoint that
    covers their batch and are published under its tag, so neither a replay nor a republish writes them again."""
    from workers.deadletter import DeadLetterSink

    store, dead = str(tmp_path / "h"), str(tmp_path / "dead")
    live = _core_with_letters(store, dead)
    live.load_checkpoint("job", run="run-A")  # a checkpointed run starts with this, even with no checkpoint yet
    live.commit(1, _with_letters(1))
    live.commit(2, _with_letters(2))
    assert _letter_ids(dead) == []  # kept for the checkpoint, not yet written
    live.save_checkpoint("job", positions={1: {"row": 10}, 2: {"row": 20}}, run="run-A")
    assert _letter_ids(dead) == ["bad1-0", "bad1-1", "bad2-0", "bad2-1"]
    live.commit(3, _with_letters(3))
    # the checkpoint record of batch 3 is saved, then the process dies before the letters are published
    monkeypatch.setattr(DeadLetterSink, "publish", lambda self, letters, tag: (_ for _ in ()).throw(OSError("dies")))
    with pytest.raises(OSError):
        live.save_checkpoint("job", positions={3: {"row": 30}}, run="run-A")
    monkeypatch.undo()
    assert "bad3-0" not in _letter_ids(dead)
    live.commit(4, _with_letters(4))  # applied after that checkpoint; dies with the process
    restored = _core_with_letters(store, dead)
    restored.load_checkpoint("job", run="run-A")  # publishes what the record holds and nothing else
    assert _letter_ids(dead) == sorted(f"bad{s}-{k}" for s in (1, 2, 3) for k in range(2))
    _core_with_letters(store, dead).load_checkpoint("job", run="run-A")  # a second restore: no second copy
    assert restored.commit(3, _with_letters(3)).duplicate
    assert restored.commit(4, _with_letters(4)).dead_letters == 2  # replayed: its letters come again, once
    restored.save_checkpoint("job", positions={4: {"row": 40}}, run="run-A")
    assert _letter_ids(dead) == sorted(f"bad{s}-{k}" for s in (1, 2, 3, 4) for k in range(2))
    assert restored.summary()["dead_letters"] == {"bad_text": 8}


def test_a_run_without_a_checkpoint_writes_its_letters_with_each_commit(tmp_path):
    dead = str(tmp_path / "dead")
    core = _core_with_letters(str(tmp_path / "h"), dead)
    core.commit(1, _with_letters(1))
    assert _letter_ids(dead) == ["bad1-0", "bad1-1"]
