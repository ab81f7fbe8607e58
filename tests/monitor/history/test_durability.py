"""The history store under faults and odd input: one writer per store (a second gets a ConfigError naming the holder),
compaction beside a live writer loses nothing, a corrupt file is quarantined and named instead of failing every
read, any stream name is stored under a bounded key, and count windows that share a start are all kept."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.cli.main import main as cli_main
from monitor.drift.windows import TumblingWindows, WindowConfig
from monitor.errors import ConfigError, CorruptFileWarning
from monitor.history import HistoryStore, parse_time, stream_key
from monitor.history.schema import STREAM_KEY_MAX_BYTES
from monitor.records import Alarm, ItemMeta, SparseCodes, WindowSummary

NAMES = [f"concept{i}" for i in range(12)]
SPACE = "durability-v1"
T0 = parse_time("2026-03-01")


def window(stream: str, start: float, n: int = 100, index: int = -1, length: float = 600.0) -> WindowSummary:
    presence = np.full(len(NAMES), n // 10, dtype=np.int64)
    return WindowSummary(stream, start, start + length, n, presence * 0.5, presence * 0.25, presence,
                         concept_space=SPACE, index=index)


def alarm(stream: str, start: float) -> Alarm:
    return Alarm(stream=stream, kind="prevalence", direction="up", concept_index=3, concept="concept3",
                 reference_prevalence=0.02, current_prevalence=0.19, reference_mean=0.01, current_mean=0.08,
                 effect_size=0.6, score=12.0, p_value=1e-9, window_start=start, window_end=start + 600)


def run_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------------------------------- one writer

HOLDER = """
    import sys, numpy as np
    from monitor.history import HistoryStore
    from monitor.records import WindowSummary
    store = HistoryStore(sys.argv[1], concept_space="durability-v1", concept_names=[f"concept{i}" for i in range(12)])
    p = np.ones(12, dtype=np.int64)
    store.write_windows([WindowSummary("s", 0.0, 600.0, 10, p * 0.5, p * 0.25, p, concept_space="durability-v1")])
    print("holding", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
"""


def test_a_second_writer_gets_a_config_error_naming_the_store_and_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "h"
    proc = run_python(HOLDER, str(root))
    try:
        assert proc.stdout.readline().strip() == "holding"
        store = HistoryStore(root, lock_timeout_s=0.3)
        assert len(store.read_windows()) == 1  # readers never lock
        with pytest.raises(ConfigError) as err:
            store.write_windows([window("s", T0)])
        message = str(err.value)
        assert str(root) in message and f"pid {proc.pid}" in message and "one writer per store" in message
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            store.set_checkpoint("job", {"row": 1})
    finally:
        proc.stdin.close()
        proc.wait(30)
    assert proc.returncode == 0
    # the holder is gone (its lock went with its process): writing works now
    assert store.write_windows([window("s", T0)]) == 1
    assert len(store.read_windows()) == 2
    store.close()


def test_stores_of_one_process_share_the_lock_and_close_releases_it(tmp_path: Path) -> None:
    a = HistoryStore(tmp_path / "h", concept_space=SPACE, concept_names=NAMES)
    b = HistoryStore.open(tmp_path / "h")
    a.write_windows([window("s", T0)])
    b.write_windows([window("s", T0 + 600)])  # same process: the same writer
    assert (tmp_path / "h" / ".writer.json").exists()
    a.close()
    assert (tmp_path / "h" / ".writer.json").exists()  # b still writes
    b.close()
    assert not (tmp_path / "h" / ".writer.json").exists()
    assert [w.start for w in HistoryStore.open(tmp_path / "h").read_windows()] == [T0, T0 + 600]


# ---------------------------------------------------------------------------------------------------- compaction

LIVE_WRITER = """
    import sys, time, numpy as np
    from monitor.history import HistoryStore
    from monitor.records import WindowSummary
    root, t0, total = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    store = HistoryStore(root, concept_space="durability-v1", concept_names=[f"concept{i}" for i in range(12)])

    def window(k, n):
        p = np.full(12, n // 10, dtype=np.int64)
        return WindowSummary("live", t0 + 600.0 * k, t0 + 600.0 * (k + 1), n, p * 0.5, p * 0.25, p,
                             concept_space="durability-v1")

    print("ready", flush=True)
    for k in range(total):
        store.write_windows([window(k, 100)])
        if k % 3 == 2 and k >= 10:
            store.write_windows([window(k - 10, 200)])  # a rewrite: the later version must win, merged or not
        time.sleep(0.04)
    print("done", flush=True)
"""


def test_compaction_beside_a_live_writer_keeps_the_store_readable_and_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "h"
    HistoryStore(root, concept_space=SPACE, concept_names=NAMES).close()
    total = 150  # 10-minute windows over two UTC days
    proc = run_python(LIVE_WRITER, str(root), str(T0), str(total))
    reader = HistoryStore.open(root)
    merged = rounds = 0
    try:
        assert proc.stdout.readline().strip() == "ready"
        while proc.poll() is None:
            # the writer holds the lock: compaction leaves files younger than the grace period alone
            stats = reader.compact(grace_s=1.5, temp_age_s=0)
            merged += stats["partitions_compacted"]
            rounds += 1
            for w in reader.read_windows():  # readable at every moment, and every window whole
                assert w.n_images in (100, 200)
                assert np.all(w.presence == w.n_images // 10), "a window lost concept rows"
            time.sleep(0.2)
    finally:
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == "done"
    assert rounds >= 3 and merged >= 1, (rounds, merged)  # compaction really ran beside the writer
    reader.compact(grace_s=0, temp_age_s=0)  # the writer is gone: everything merges
    got = reader.read_windows()
    rewritten = {k - 10 for k in range(total) if k % 3 == 2 and k >= 10}
    assert [round((w.start - T0) / 600) for w in got] == list(range(total))
    assert [w.n_images for w in got] == [200 if k in rewritten else 100 for k in range(total)]
    for w in got:
        assert np.all(w.presence == w.n_images // 10)
    assert len(list((root / "windows").rglob("*.parquet"))) == 2  # one file per day after the final compaction


def test_a_young_orphan_survives_compaction_beside_a_writer_and_goes_once_none_writes(tmp_path: Path) -> None:
    root = tmp_path / "h"
    store = HistoryStore(root, concept_space=SPACE, concept_names=NAMES)
    store.write_windows([window("s", T0)])
    part = next((root / "window_concepts").glob("stream=s/date=*"))
    orphan = part / "99999999999999999999-inflight.parquet"  # a batch whose windows file is not written yet
    orphan.write_bytes(next(part.glob("*.parquet")).read_bytes())
    store.close()
    proc = run_python(HOLDER.replace('"s", 0.0, 600.0', '"other", 0.0, 600.0'), str(root))
    try:
        assert proc.stdout.readline().strip() == "holding"
        stats = HistoryStore.open(root).compact(temp_age_s=0)  # default grace: 10 minutes
        assert stats["orphans_removed"] == 0 and orphan.exists()
    finally:
        proc.stdin.close()
        proc.wait(30)
    stats = HistoryStore.open(root).compact(temp_age_s=0)  # nobody writes now: no grace needed
    assert stats["orphans_removed"] == 1 and not orphan.exists()


# ---------------------------------------------------------------------------------------------------- quarantine


def test_a_corrupt_file_is_quarantined_named_and_no_longer_fatal(tmp_path: Path, capsys) -> None:
    root = tmp_path / "h"
    store = HistoryStore(root, concept_space=SPACE, concept_names=NAMES)
    store.write_windows([window("cam", T0 + 600 * k) for k in range(3)])  # day 0: one batch
    store.write_windows([window("cam", T0 + 86400 + 600 * k) for k in range(2)])  # day 1: another
    dense = np.eye(4, len(NAMES))
    store.write_codes(SparseCodes.from_dense(dense, np.ones(4), 0.25),
                      [ItemMeta(f"i{k}", T0 + 86400 * (k % 2) + k, "cam") for k in range(4)])
    store.close()
    bad = next((root / "windows").glob("stream=cam/date=2026-03-01/*.parquet"))
    bad.write_bytes(b"PAR1" + b"\x00garbage" * 20 + b"PAR1")
    codes_file = sorted((root / "codes").rglob("*.parquet"))[0]
    codes_file.write_bytes(codes_file.read_bytes()[:-30])  # truncated: the footer is gone
    rel = bad.relative_to(root).as_posix()

    reader = HistoryStore.open(root)
    with pytest.warns(CorruptFileWarning) as caught:
        got = reader.read_windows()
    assert [w.start for w in got] == [T0 + 86400, T0 + 86400 + 600]  # day 1 intact, day 0 set aside
    messages = [str(w.message) for w in caught]
    assert any(rel in m and f"quarantine/{rel}" in m for m in messages), messages
    assert (root / "quarantine" / rel).exists() and not bad.exists()
    # the rest of that window batch went with it, so no half batch is left behind
    assert (root / "quarantine" / "window_concepts" / Path(rel).relative_to("windows")).exists()
    assert any(codes_file.name in m for m in messages)  # every unreadable file is found in one sweep
    _, items = reader.read_codes()
    assert sorted(i.id for i in items) == ["i0", "i2"] or sorted(i.id for i in items) == ["i1", "i3"]

    # the command line keeps working and lists what is left
    assert cli_main(["history", "list", "--store", str(root), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["streams"]["cam"]["windows"] == 2


def test_an_error_no_corrupt_file_explains_is_raised_as_it_is(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h", concept_space=SPACE, concept_names=NAMES)
    store.write_windows([window("s", T0)])
    assert store.quarantine_corrupt() == []
    assert not (tmp_path / "h" / "quarantine").exists()


# ---------------------------------------------------------------------------------------------------- stream names

ODD_NAMES = [
    "東京駅前交差点北口監視カメラ第七番映像配信ストリーム系統線",  # 29 characters: 261 bytes escaped
    "x" * 300,
    "x" * 299 + "y",  # same readable prefix as the one above: the hash keeps them apart
    "a/b",
    "..",
    ".",
    "cam 7 %41",
    "ok-plain_name.v2",
]


def test_any_stream_name_is_stored_under_a_bounded_collision_free_key(tmp_path: Path) -> None:
    assert len(ODD_NAMES[0]) == 29 and all(ord(c) > 127 for c in ODD_NAMES[0])
    keys = [stream_key(n) for n in ODD_NAMES]
    assert len(set(keys)) == len(keys)
    assert all(len(k.encode()) <= STREAM_KEY_MAX_BYTES for k in keys)
    assert keys[-1] == "ok-plain_name.v2"  # short names keep their readable, version-1 key
    store = HistoryStore(tmp_path / "h", concept_space=SPACE, concept_names=NAMES)
    for i, name in enumerate(ODD_NAMES):
        store.write_windows([window(name, T0 + 600 * i, n=10 * (i + 1))])
        store.write_alarms([alarm(name, T0 + 600 * i)])
        store.write_codes(SparseCodes.from_dense(np.eye(1, len(NAMES)), np.ones(1), 0.25),
                          [ItemMeta(f"id{i}", T0 + 600 * i, name)])
    store.close()
    for d in (tmp_path / "h").rglob("*"):
        assert len(d.name.encode()) <= 255, d
    reader = HistoryStore.open(tmp_path / "h")  # a fresh reader: names come from the rows and the registry
    assert reader.streams() == sorted(ODD_NAMES) == reader.streams("codes") == reader.streams("alarms")
    for i, name in enumerate(ODD_NAMES):
        (w,) = reader.read_windows(name)
        assert (w.stream, w.n_images) == (name, 10 * (i + 1))
        assert [a.stream for a in reader.read_alarms(name)] == [name]
        assert [it.id for it in reader.read_codes(name)[1]] == [f"id{i}"]
    assert set(reader.describe()["streams"]) == set(ODD_NAMES)
    assert reader.compact(grace_s=0)["partitions_compacted"] == 0  # nothing to merge, nothing misread


# ---------------------------------------------------------------------------------------------------- count windows


def _count_windows(n: int, size: int, splits: list[int]) -> list[WindowSummary]:
    """Closed count windows of a stream of n items without event times (every item has the same time)."""
    tw = TumblingWindows(len(NAMES), WindowConfig(kind="count", size=size))
    rng = np.random.default_rng(n * 7919 + size)
    dense = (rng.random((n, len(NAMES))) < 0.3) * rng.uniform(0.1, 1.0, (n, len(NAMES)))
    codes = SparseCodes.from_dense(dense, np.full(n, 0.8), 0.25)
    closed, pos = [], 0
    for cut in sorted(set(splits)) + [n]:
        if cut > pos:
            closed += tw.add(codes.take(np.arange(pos, cut)), np.full(cut - pos, T0))
            pos = cut
    closed += tw.flush()
    return [w.summary("cam", SPACE) for w in closed]


def test_twelve_count_windows_without_event_times_are_twelve_windows_in_history(tmp_path: Path, capsys) -> None:
    closed = _count_windows(6000, 500, [1000, 2300, 4100])
    assert len(closed) == 12 and len({w.start for w in closed}) == 1  # every window starts at the same time
    store = HistoryStore(tmp_path / "h", concept_space=SPACE, concept_names=NAMES)
    store.write_windows(closed[:5])
    store.write_windows(closed[5:])
    assert store.compact()["partitions_compacted"] == 1  # and compaction keeps all of them
    store.close()
    assert cli_main(["history", "list", "--store", str(tmp_path / "h"), "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)["streams"]["cam"]
    assert (info["windows"], info["images"]) == (12, 6000)
    got = HistoryStore.open(tmp_path / "h").read_windows()
    assert [w.index for w in got] == list(range(12))
    for a, b in zip(closed, got):
        np.testing.assert_array_equal(a.presence, b.presence)
        np.testing.assert_allclose(a.weight_sum, b.weight_sum)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 900),
    size=st.integers(1, 200),
    splits=st.lists(st.integers(0, 900), max_size=8),
    order_seed=st.integers(0, 2**31 - 1),
    repeat=st.integers(0, 3),
)
def test_count_windows_in_history_equal_the_windows_closed_for_any_batch_order(
    tmp_path_factory, n, size, splits, order_seed, repeat
) -> None:
    closed = _count_windows(n, size, [s for s in splits if s < n])
    assert len(closed) == math.ceil(n / size)
    # commits arrive in any order and in any grouping, some twice (a retried batch): history still holds each once
    rng = np.random.default_rng(order_seed)
    order = [closed[i] for i in rng.permutation(len(closed))] + [closed[i] for i in rng.integers(0, len(closed), repeat)]
    cuts = sorted(rng.integers(0, len(order) + 1, 3))
    store = HistoryStore(tmp_path_factory.mktemp("h"), concept_space=SPACE, concept_names=NAMES)
    for part in np.split(np.arange(len(order)), cuts):
        store.write_windows([order[i] for i in part])
    got = store.read_windows()
    assert [w.index for w in got] == [w.index for w in closed]
    assert [w.n_images for w in got] == [w.n_images for w in closed]
    assert sum(w.n_images for w in got) == n
    for a, b in zip(closed, got):
        np.testing.assert_array_equal(a.presence, b.presence)
    store.close()


def test_version_1_rows_read_as_unnumbered_windows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    store = HistoryStore(tmp_path / "h", concept_space=SPACE, concept_names=NAMES)
    store.write_windows([window("s", T0, index=4)])
    # drop the window_index column from both files, as a version-1 writer would have written them
    for table in ("windows", "window_concepts"):
        f = next((tmp_path / "h" / table).rglob("*.parquet"))
        t = pq.read_table(f)
        pq.write_table(t.drop_columns(["window_index"]), f)
        assert "window_index" not in pq.read_schema(f).names
    (w,) = store.read_windows()
    assert (w.index, w.n_images) == (-1, 100)
    assert np.all(w.presence == 10)


def test_threads_of_one_process_are_one_writer(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    HistoryStore(tmp_path / "h", concept_space=SPACE, concept_names=NAMES).close()
    stores = [HistoryStore(tmp_path / "h", lock_timeout_s=1.0) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:  # every thread's first write races for the lock
        done = list(pool.map(lambda i: stores[i].write_windows([window(f"s{i}", T0, index=i)]), range(4)))
    assert done == [1, 1, 1, 1]
    assert sorted(w.stream for w in HistoryStore.open(tmp_path / "h").read_windows()) == ["s0", "s1", "s2", "s3"]
    for s in stores:
        s.close()
    assert not (tmp_path / "h" / ".writer.json").exists()
