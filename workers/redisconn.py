"""One way to open a Redis connection from a URI, for the stream source and the dead-letter sink alike.

The password never has to be in the URI (where it would reach argv, logs and dead letters): when the URI names no
password, it is read from ``SPLICE_REDIS_PASSWORD`` (or ``REDIS_PASSWORD``), which Kubernetes fills from a Secret.
``rediss://`` (TLS) and ACL users (``redis://monitor@host``) are redis-py's own URI forms and pass straight through.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

__all__ = ["PASSWORD_ENV", "connect", "password_from_env"]

PASSWORD_ENV = ("SPLICE_REDIS_PASSWORD", "REDIS_PASSWORD")  # first set, non-empty one wins


def password_from_env(environ=None) -> str | None:
    env = os.environ if environ is None else environ
    for name in PASSWORD_ENV:
        value = env.get(name)
        if value:
            return value
    return None


def connect(url: str, environ=None, **options):
    """``redis.Redis`` for ``url``; a password in the URI wins over the environment. ``options`` go to redis-py
    (e.g. socket timeouts)."""
    import redis

    kwargs = dict(options)
    parts = urlsplit(url)
    if not (parts.password and unquote(parts.password)):
        password = password_from_env(environ)
        if password:
            kwargs["password"] = password
    return redis.Redis.from_url(url, **kwargs)
