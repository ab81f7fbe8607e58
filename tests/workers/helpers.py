"""Helpers for the Ray shell's tests: payload builders and stream fillers. Plain functions, imported by tests
and by tests/workers/conftest.py alike (never imported out of a conftest)."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import time

import numpy as np

from tests.processes import free_port, stop_process


def start_redis(port: int, workdir, *, password: str | None = None, aof: bool = False) -> subprocess.Popen:
    """Start a redis-server (Debian package) on 127.0.0.1:``port``. With ``aof`` its data survives a restart
    (append-only file, fsynced on every write), for tests that restart it."""
    exe = shutil.which("redis-server") or "redis-server"
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
    args += ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
    if password:
        args += ["--requirepass", password]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_redis(port: int, *, password: str | None = None, proc: subprocess.Popen | None = None):
    """A client of the redis-server on ``port`` once it answers PING (20 s at most, or until ``proc`` exits)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return client
        except redis.ConnectionError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def redis_server(workdir, *, password: str | None = None):
    """A throwaway redis-server on a free loopback port, persisting nothing; yields ``(port, client)`` and stops
    it on exit."""
    port = free_port()
    proc = start_redis(port, workdir, password=password)
    try:
        client = wait_for_redis(port, password=password, proc=proc)
        try:
            yield port, client
        finally:
            client.close()
    finally:
        stop_process(proc)


def jpeg_bytes(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def caption_parquet(path, n: int, **kwargs) -> tuple[str, list[str]]:
    """A caption Parquet file from the demo's generator; returns (source URI, item ids)."""
    from monitor.synthetic.captions import CaptionStream, write_parquet

    stream = CaptionStream(n=n, **kwargs)
    uri = write_parquet(stream, str(path))
    return uri, [c.id for c in stream]


def add_captions(client, key: str, n: int, seed: int = 0) -> list[str]:
    """XADD n captions; returns their entry ids (the items' ids)."""
    from monitor.synthetic.captions import CaptionStream

    pipe = client.pipeline(transaction=False)
    for c in CaptionStream(n=n, seed=seed):
        pipe.xadd(key, {"text": c.text, "ts": repr(c.timestamp), "topic": c.topic})
    return [i.decode() for i in pipe.execute()]


def pushed_samples(gateway: str, name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``, as the Pushgateway serves them."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{gateway}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def drain(source, size=3):
    """Read and acknowledge every batch of a finite source; returns the batches."""
    out = []
    while True:
        batch = source.read(size, timeout_s=0.05)
        if batch is None:
            return out
        batch.items  # processed before acknowledged: a Redis worker-claim batch claims its entries when loaded
        source.ack(batch)
        out.append(batch)
