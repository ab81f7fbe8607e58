"""Redis sources ack only what they are told, re-read their own pending entries on restart, take over a dead
consumer's entries, and flag malformed entries (no payload, bad timestamp) as dead-letter items."""

from __future__ import annotations

import time

import pytest

from monitor.errors import ConfigError
from tests.workers.helpers import drain, jpeg_bytes, start_redis, wait_for_redis
from workers.sources import RedisSource, open_source


def _add(client, key, n, start=0):
    return [client.xadd(key, {"image": jpeg_bytes(i), "ts": str(1_700_000_000 + i), "camera": f"c{i % 2}"})
            for i in range(start, start + n)]


def test_redis_source_acks_only_what_it_is_told_and_drains(redis_url, redis_client):
    ids = _add(redis_client, "frames", 5)
    src = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&drain=1&stream_field=camera")
    b1 = src.read(3, timeout_s=0.1)
    assert [it.meta.id for it in b1.items] == [i.decode() for i in ids[:3]]
    assert b1.items[1].meta.stream == "c1" and b1.items[1].meta.timestamp == 1_700_000_001.0
    assert b1.items[0].meta.metadata == {"camera": "c0"}
    assert redis_client.xpending("frames", "g")["pending"] == 3
    src.ack(b1)
    assert redis_client.xpending("frames", "g")["pending"] == 0
    rest = drain(src)
    assert [it.meta.id for b in rest for it in b.items] == [i.decode() for i in ids[3:]]


def test_redis_restart_under_same_consumer_rereads_its_unacknowledged_entries(redis_url, redis_client):
    ids = _add(redis_client, "frames", 4)
    first = RedisSource(redis_url, stream="frames", group="g", consumer="worker-1", claim="driver")  # acks by id
    taken = first.read(4, timeout_s=0.1)
    assert len(taken) == 4
    first.ack(type(taken)(seq=0, items=taken.items[:1], token=taken.token[:1]))
    first.close()  # dies with three entries unacknowledged
    again = RedisSource(redis_url, stream="frames", group="g", consumer="worker-1", drain=True)
    got = [it.meta.id for b in drain(again) for it in b.items]
    assert got == [i.decode() for i in ids[1:]]


def test_redis_xautoclaim_takes_over_a_dead_consumers_pending_entries(redis_url, redis_client):
    ids = _add(redis_client, "frames", 3)
    dead = RedisSource(redis_url, stream="frames", group="g", consumer="dead")
    assert len(dead.read(3, timeout_s=0.1)) == 3  # never acknowledged
    heir = RedisSource(redis_url, stream="frames", group="g", consumer="heir", claim_idle_ms=50, drain=True)
    time.sleep(0.1)
    got = [it.meta.id for b in drain(heir) for it in b.items]
    assert got == [i.decode() for i in ids]
    assert redis_client.xpending("frames", "g")["pending"] == 0


def test_redis_entry_without_payload_is_a_bad_record(redis_url, redis_client):
    redis_client.xadd("frames", {"camera": "c0"})
    redis_client.xadd("frames", {"text": "a caption"})
    items = [it for b in drain(open_source(f"{redis_url}?stream=frames&drain=1")) for it in b.items]
    assert items[0].error[0] == "bad_record" and "payload fields" in items[0].error[1]
    assert items[1].kind == "text" and items[1].payload == b"a caption" and items[1].error is None


def test_redis_uri_without_stream_is_a_config_error(redis_url):
    with pytest.raises(ConfigError, match=r"\?stream="):
        open_source(redis_url)


@pytest.mark.parametrize("ts", ["nan", "inf", "1e400", "9999-12-31T00:00:00", "not a time"])
def test_redis_entry_with_a_bad_timestamp_is_a_bad_timestamp_item(redis_url, redis_client, ts):
    redis_client.xadd("frames", {"text": "a caption", "ts": ts})
    redis_client.xadd("frames", {"text": "another", "ts": "1700000000"})
    items = [it for b in drain(open_source(f"{redis_url}?stream=frames&drain=1")) for it in b.items]
    assert items[0].error[0] == "bad_timestamp" and items[0].error[1].startswith("ts: ")
    assert items[1].error is None and items[1].meta.timestamp == 1_700_000_000.0
    assert redis_client.xpending("frames", "splice")["pending"] == 0


def test_a_redis_restart_mid_stream_is_ridden_out_and_every_entry_comes_once(tmp_path):
    import threading

    from tests.workers.helpers import free_port

    port = free_port()
    server = start_redis(port, tmp_path, aof=True)
    procs = [server]
    try:
        client = wait_for_redis(port)
        ids = [client.xadd("s", {"text": f"c{i}"}) for i in range(30)]
        src = open_source(f"redis://127.0.0.1:{port}/0?stream=s&group=g&consumer=c1&drain=1")
        first = src.read(10, timeout_s=0.1)
        src.ack(first)
        second = src.read(10, timeout_s=0.1)  # handed out, not acknowledged when the server goes down
        server.terminate()
        server.wait(timeout=20)

        def restart():
            time.sleep(1.0)
            procs.append(start_redis(port, tmp_path, aof=True))

        threading.Thread(target=restart).start()
        src.ack(second)  # retried until the server is back
        rest = drain(src)  # reads retried too
        got = [it.meta.id for b in [first, second, *rest] for it in b.items]
        assert got == [i.decode() for i in ids]
        assert wait_for_redis(port).xpending("s", "g")["pending"] == 0
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def test_a_redis_server_that_stays_down_is_one_clear_error(tmp_path):
    from monitor.errors import PipelineError
    from tests.workers.helpers import free_port

    port = free_port()
    server = start_redis(port, tmp_path, aof=True)
    try:
        client = wait_for_redis(port)
        client.xadd("s", {"text": "c"})
        src = open_source(f"redis://:pw@127.0.0.1:{port}/0?stream=s&group=g&retries=2")
    finally:
        server.terminate()
        server.wait(timeout=20)
    with pytest.raises(PipelineError, match=r"redis source .* stream 's': read failed 3 times") as info:
        src.read(5, timeout_s=0.1)
    assert "\n" not in str(info.value) and "pw" not in str(info.value)
    with pytest.raises(ConfigError, match="retries must be an integer"):
        open_source(f"redis://127.0.0.1:{port}/0?stream=s&retries=many")
