"""Dead-letter sinks: a letter is durable when ``write`` returns (so the batch may be acknowledged), and a sink that
cannot be reached retries, then fails with one clear line, never losing what was acknowledged."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from monitor.errors import ConfigError, PipelineError
from tests.workers.helpers import free_port
from workers.items import DeadLetter
from workers.deadletter import open_sink, read_parquet_dead_letters


def _letters(n):
    return [DeadLetter(item_id=f"i{k}", stream="s", timestamp=1.0 + k, reason="truncated", detail=f"d{k}",
                       ref=f"/x/{k}.jpg") for k in range(n)]


def test_parquet_dead_letter_sink_letters_are_on_disk_when_write_returns(tmp_path):
    """The probe that found 0 files after a killed driver: letters must not wait in a buffer past the write that
    lets the batch be acknowledged."""
    sink = open_sink(f"parquet://{tmp_path / 'dl'}")
    letters = _letters(3)
    sink.write(letters[:1])
    assert read_parquet_dead_letters(tmp_path / "dl").column("item_id").to_pylist() == ["i0"]
    sink.write(letters[1:])
    # read back by a fresh reader without close() or flush(): what a rerun after SIGKILL would find
    table = read_parquet_dead_letters(tmp_path / "dl")
    assert table.column("item_id").to_pylist() == ["i0", "i1", "i2"]
    assert set(table.column("reason").to_pylist()) == {"truncated"}
    assert not [p for p in (tmp_path / "dl").iterdir() if p.name.startswith(".")]
    assert sink.counts == {"truncated": 3}


def test_parquet_dead_letter_sink_rejects_options_it_no_longer_has(tmp_path):
    with pytest.raises(ConfigError, match=r"takes no options, got \['flush_every'\]"):
        open_sink(f"parquet://{tmp_path / 'dl'}?flush_every=10")


def test_parquet_sink_that_cannot_write_fails_with_one_line_naming_the_directory(tmp_path):
    sink = open_sink(f"parquet://{tmp_path / 'dl'}")
    (tmp_path / "dl").rmdir()
    (tmp_path / "dl").write_bytes(b"")  # the directory became a file: no part file can be created, even as root
    with pytest.raises(PipelineError, match=r"dead-letter sink .*dl: cannot write 2 letter\(s\)") as info:
        sink.write(_letters(2))
    assert "\n" not in str(info.value) and sink.total == 0  # not counted: not written


def test_redis_dead_letter_sink_appends_entries(redis_url, redis_client):
    sink = open_sink(f"{redis_url}?stream=dead")
    sink.write(_letters(2))
    entries = redis_client.xrange("dead")
    assert [e[1][b"reason"] for e in entries] == [b"truncated", b"truncated"]
    assert entries[1][1][b"ref"] == b"/x/1.jpg"


def test_dead_letter_reason_outside_the_closed_set_is_rejected():
    with pytest.raises(ValueError, match="reason must be one of"):
        DeadLetter(item_id="x", stream="s", timestamp=0.0, reason="weird", detail="")


def test_redis_sink_unreachable_retries_with_backoff_then_fails_with_one_clear_line():
    port = free_port()  # nothing listens here
    sink = open_sink(f"redis://:secret@127.0.0.1:{port}/0?stream=dead&retries=3")
    sink.backoff_s = 0.05
    t0 = time.monotonic()
    with pytest.raises(PipelineError) as info:
        sink.write(_letters(2))
    message = str(info.value)
    assert time.monotonic() - t0 >= 0.05 + 0.1 + 0.2  # three waits, doubling
    assert message.startswith(f"dead-letter sink redis://:***@127.0.0.1:{port}/0 stream 'dead' unreachable: 4 tries")
    assert "not acknowledged" in message and "\n" not in message and "secret" not in message
    assert sink.total == 0  # nothing counted that was not written


def test_redis_sink_rides_out_an_outage_shorter_than_its_retries(tmp_path):
    """Redis comes up while the sink is backing off: the letters are written once, the write does not fail."""
    import shutil

    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    sink = open_sink(f"redis://127.0.0.1:{port}/0?stream=dead&retries=8")
    sink.backoff_s = 0.1
    procs = []

    def start_later():
        time.sleep(0.5)
        procs.append(subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(tmp_path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        sink.write(_letters(3))
        client = redis.Redis(host="127.0.0.1", port=port)
        assert [e[1][b"item_id"] for e in client.xrange("dead")] == [b"i0", b"i1", b"i2"]
        assert sink.counts == {"truncated": 3}
        client.close()
    finally:
        starter.join()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def test_redis_sink_options_are_checked():
    with pytest.raises(ConfigError, match="retries must be an integer"):
        open_sink("redis://127.0.0.1:6379/0?stream=d&retries=many")
    with pytest.raises(ConfigError, match=r"allowed: \['maxlen', 'retries', 'stream'\]"):
        open_sink("redis://127.0.0.1:6379/0?stream=d&colour=red")


@pytest.mark.parametrize("kind", ["parquet", "redis"])
def test_publishing_under_the_same_tag_again_writes_nothing_more(kind, tmp_path, redis_url, redis_client):
    """A checkpointed run publishes a checkpoint's letters under its tag, and again after a crash (or a lost Redis
    reply): the second time must not add a copy."""
    if kind == "parquet":
        sink = open_sink(f"parquet://{tmp_path / 'dead'}")
        read = lambda: read_parquet_dead_letters(str(tmp_path / "dead"))["item_id"].to_pylist()  # noqa: E731
    else:
        sink = open_sink(f"{redis_url}?stream=dl-tagged")
        read = lambda: [f[b"item_id"].decode() for _, f in redis_client.xrange("dl-tagged")]  # noqa: E731
    sink.staging = True
    assert sink.write(_letters(3)) == 3 and read() == []  # staged: counted, kept for the checkpoint
    letters = sink.take_pending()
    assert len(letters) == 3 and sink.pending == [] and sink.total == 3
    for _ in range(2):
        sink.publish(letters, tag="job-a:cp1")
    assert sorted(read()) == sorted(d.item_id for d in letters)
    sink.write(_letters(1))
    sink.publish(sink.take_pending(), tag="job-a:cp2")  # the next checkpoint's letters are new ones
    assert len(read()) == 4
    sink.close()
