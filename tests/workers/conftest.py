"""Fixtures for the Ray shell's tests: a real redis-server on a free loopback port, one local Ray per session, and
small image/caption payloads covering every bad-input class."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.workers.helpers import redis_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """URL of a throwaway redis-server (Debian package) bound to 127.0.0.1, stopped at the end of the session."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; scripts/setup.sh installs it)")
    with redis_server(tmp_path_factory.mktemp("redis")) as (port, _client):
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def test_vocab(tmp_path_factory) -> str:
    """A small real vocabulary (topic words of the caption stream plus the most frequent built-in concepts), so
    dictionaries build in about a second."""
    from monitor.concepts.vocab import default_vocabulary
    from monitor.synthetic.captions import TOPICS

    words = []
    for parts in TOPICS.values():
        for phrase in parts["subjects"] + parts["places"] + parts["extras"]:
            words += [w for w in phrase.replace(",", " ").split() if len(w) > 2]
    words += list(default_vocabulary().concepts[:200])
    seen, vocab = set(), []
    for w in words:
        if w not in seen:
            seen.add(w)
            vocab.append(w)
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def cache_dir(splice_cache_dir) -> str:
    """The suite's persistent dictionary cache (tests/conftest.py), so dictionaries are built once per checkout."""
    return str(splice_cache_dir)


@pytest.fixture(scope="session")
def text_config(test_vocab, cache_dir):
    from workers.core import WorkerConfig

    return WorkerConfig(model="minilm", vocab=test_vocab, cache_dir=cache_dir, mean="vocab")


@pytest.fixture(scope="session")
def image_config(test_vocab, cache_dir, tmp_path_factory):
    """A small open_clip architecture at seeded random init (no weights can be downloaded here), with 64 concepts:
    its text tower is slow on a shared CPU and random weights give the concepts no meaning anyway."""
    from workers.core import WorkerConfig

    words = open(test_vocab).read().split("\n")[:64]
    path = tmp_path_factory.mktemp("vocab-img") / "vocab64.txt"
    path.write_text("\n".join(words) + "\n")
    return WorkerConfig(model="ViT-S-32", pretrained="random", vocab=str(path), cache_dir=cache_dir,
                        max_pixels=4_000_000, mean="vocab")

