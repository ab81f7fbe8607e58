"""Credentials stay out of argv, logs, dead letters and history: a real redis-server that requires a password, a
real run through local Ray with the password in the source and sink URIs, then a grep of everything written."""

from __future__ import annotations

import shutil

import pytest

from monitor.cli.main import main as cli_main
from tests.workers.helpers import add_captions, redis_server

PASSWORD = "S3cretPW-do-not-log"


@pytest.fixture
def secured_redis(tmp_path):
    """A throwaway redis-server on loopback that refuses clients without PASSWORD; yields ``(port, client)``."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    with redis_server(tmp_path, password=PASSWORD) as server:
        yield server


def test_password_comes_from_the_environment_when_the_uri_has_none(secured_redis, monkeypatch):
    import redis

    from workers.redisconn import connect
    from workers.sources import open_source

    port, client = secured_redis
    ids = add_captions(client, "frames", 5)
    url = f"redis://127.0.0.1:{port}/0"
    monkeypatch.delenv("SPLICE_REDIS_PASSWORD", raising=False)
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    with pytest.raises(redis.AuthenticationError):
        connect(url).ping()
    assert connect(url, environ={"REDIS_PASSWORD": PASSWORD}).ping()
    # the first name wins; a password in the URI wins over both
    assert connect(url, environ={"SPLICE_REDIS_PASSWORD": PASSWORD, "REDIS_PASSWORD": "wrong"}).ping()
    assert connect(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", environ={"SPLICE_REDIS_PASSWORD": "wrong"}).ping()
    # an ACL user with its password from the environment
    client.acl_setuser("monitor", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])
    assert connect(f"redis://monitor@127.0.0.1:{port}/0", environ={"SPLICE_REDIS_PASSWORD": PASSWORD}).ping()
    with pytest.raises(redis.AuthenticationError):
        connect(f"redis://monitor@127.0.0.1:{port}/0", environ={"SPLICE_REDIS_PASSWORD": "wrong"}).ping()

    monkeypatch.setenv("SPLICE_REDIS_PASSWORD", PASSWORD)
    with open_source(f"{url}?stream=frames&group=g&drain=1") as src:
        batch = src.read(10, timeout_s=1.0)
        assert [i.meta.id for i in batch.items] == ids
        assert all(i.ref.startswith(f"redis://127.0.0.1:{port}/0?stream=frames#") for i in batch.items)


def test_no_password_in_dead_letters_logs_history_or_summary_after_a_run(
        secured_redis, ray_local, test_vocab, cache_dir, tmp_path, capsys, caplog):
    port, client = secured_redis
    ids = add_captions(client, "frames", 40)
    for _ in range(3):  # no payload field: dead-lettered as bad_record, with the item's ref
        client.xadd("frames", {"nothing": "here"})
    source = f"redis://:{PASSWORD}@127.0.0.1:{port}/0?stream=frames&group=splice&drain=1"
    sink = f"redis://:{PASSWORD}@127.0.0.1:{port}/0?stream=deadletters"
    history = tmp_path / "history"
    rc = cli_main(["run", "--source", source, "--dead-letter", sink, "--history", str(history),
                   "--metrics-port", "-1", "--workers", "1", "--batch-size", "20", "--model", "minilm",
                   "--vocab", test_vocab, "--mean", "vocab", "--cache-dir", cache_dir, "--window", "20",
                   "--reference-images", "20", "--pushgateway", f"http://user:{PASSWORD}@127.0.0.1:1"])
    captured = capsys.readouterr()
    assert f"images counted: {len(ids)}" in captured.out
    assert rc == 1 and "pushing the final metrics failed" in captured.err  # the gateway URL is unreachable
    letters = client.xrange("deadletters")
    assert len(letters) == 3
    refs = [fields[b"ref"].decode() for _, fields in letters]
    assert all(r.startswith(f"redis://:***@127.0.0.1:{port}/0?stream=frames#") for r in refs), refs

    secret = PASSWORD.encode()
    assert all(secret not in v for _, fields in letters for v in fields.values())
    assert PASSWORD not in captured.out + captured.err + caplog.text
    written = [p for p in history.rglob("*") if p.is_file()]
    assert written, "the run wrote no history"
    assert not [p for p in written if secret in p.read_bytes()]
    from pathlib import Path

    from ray._private.worker import _global_node  # every log the local Ray cluster wrote during the run

    logs = [p for p in Path(_global_node.get_session_dir_path(), "logs").rglob("*") if p.is_file()]
    assert logs and not [p for p in logs if secret in p.read_bytes()]


def test_rediss_uri_opens_a_tls_connection_with_the_acl_user_and_the_environment_password():
    """No TLS redis-server here: check what redis-py was asked to build, without connecting."""
    import redis

    from workers.redisconn import connect

    client = connect("rediss://monitor@redis.data.svc:6380/0", environ={"SPLICE_REDIS_PASSWORD": PASSWORD})
    pool = client.connection_pool
    assert issubclass(pool.connection_class, redis.SSLConnection)
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["host"], kwargs["port"]) == \
        ("monitor", PASSWORD, "redis.data.svc", 6380)
