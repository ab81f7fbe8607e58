"""Source and sink URIs: split them into scheme, path and options, and build the source a URI names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from monitor.errors import ConfigError
from monitor.uris import redact_uri

__all__ = ["parse_uri", "take_options", "open_source"]


def parse_uri(uri: str) -> tuple[str, str, dict[str, str], Any]:
    """Split a source or sink URI into (scheme, path, options, parsed url). A plain path is ``dir`` or ``parquet``."""
    if not isinstance(uri, str) or not uri:
        raise ConfigError(f"source URI must be a non-empty string, got {uri!r}")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = unquote(parsed.path if scheme == "file" else uri.split("?", 1)[0])
        suffix = Path(path).suffix.lower()
        scheme = "parquet" if suffix in (".parquet", ".arrow", ".feather", ".ipc") else "dir"
    else:
        path = unquote((parsed.netloc + parsed.path) if scheme in ("dir", "parquet", "arrow") else parsed.path)
    options = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
    return scheme, path, options, parsed


def take_options(options: dict[str, str], allowed: dict[str, Any], where: str) -> dict[str, Any]:
    """``allowed`` (the defaults) updated with ``options``; an option not in ``allowed`` is a ConfigError listing
    the allowed ones."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {where} option(s) {unknown}; allowed: {sorted(allowed)}")
    out = dict(allowed)
    out.update(options)
    return out


def open_source(uri: str, *, kind: str | None = None, stream: str | None = None):
    """Build the source named by ``uri``. ``kind`` ("image"/"text") and ``stream`` override the URI's defaults."""
    from workers.sources.arrow_files import ParquetSource
    from workers.sources.directory import DirectorySource
    from workers.sources.redis_streams import RedisSource

    scheme, path, options, parsed = parse_uri(uri)
    if kind is not None:
        options.setdefault("kind", kind)
    if stream is not None:
        options.setdefault("stream", stream)
    if scheme == "dir":
        return DirectorySource(path, **take_options(options, DirectorySource.OPTIONS, "dir source"))
    if scheme in ("parquet", "arrow"):
        return ParquetSource(path, **take_options(options, ParquetSource.OPTIONS, "parquet source"))
    if scheme in ("redis", "rediss"):
        opts = take_options(options, RedisSource.OPTIONS, "redis source")
        url = f"{scheme}://{parsed.netloc}{parsed.path}"
        return RedisSource(url, **opts)
    raise ConfigError("source URI scheme must be one of dir, parquet, arrow, redis or a plain path; "
                      f"got {redact_uri(uri)!r}")
