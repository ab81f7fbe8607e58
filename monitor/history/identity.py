"""A history store's identity, ``store.json``: format, schema version and the concept space (with its names) that
every row of the store indexes. Opening checks it; creating writes it once."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any

from monitor.errors import ConfigError
from monitor.history.fs import ACCESS_HINTS, StoreFS, short_error
from monitor.history.schema import FORMAT_NAME, SCHEMA_VERSION

__all__ = ["names_digest", "open_store_meta"]


def open_store_meta(
    fs: StoreFS,
    location: str,
    concept_space: str | None,
    concept_names: Sequence[str] | None,
    *,
    create: bool,
    before_write: Callable[[], Any],
) -> dict[str, Any]:
    """The store's ``store.json``, checked against the given space and names, or written when the store is new
    (``create``; ``before_write`` runs first: the writer lock)."""
    meta_path = fs.join("store.json")
    try:
        found = fs.exists(meta_path)
    except OSError as exc:  # the first request: bad credentials, endpoint or network show up here
        hint = ACCESS_HINTS.get(fs.scheme, "check the credentials, the endpoint and the network")
        raise ConfigError(f"history store {location!r}: cannot read it ({short_error(exc)}); {hint}") from None
    if found:
        meta = _load_meta(fs, location, meta_path)
        _check_compatible(location, meta, concept_space, concept_names)
        return meta
    if not create:
        raise ConfigError(f"no history store at {location!r} (missing store.json)")
    if concept_space is None or concept_names is None:
        raise ConfigError(f"no history store at {location!r}: to create one pass concept_space and concept_names")
    return _create(fs, location, meta_path, concept_space, list(concept_names), before_write)


def names_digest(names: Sequence[str]) -> str:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _create(fs: StoreFS, location: str, meta_path: PurePath, concept_space: str, names: list[str],
            before_write: Callable[[], Any]) -> dict[str, Any]:
    if not isinstance(concept_space, str) or not concept_space:
        raise ConfigError(f"concept_space must be a non-empty string, got {concept_space!r}")
    if not names:
        raise ConfigError("concept_names must list at least one concept, got an empty list")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})[:5]
        raise ConfigError(f"concept_names must be unique, duplicates: {dupes}")
    meta = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "concept_space": concept_space,
        "n_concepts": len(names),
        "concept_names_sha256": names_digest(names),
        "created": time.time(),
        "concept_names": names,
    }
    try:
        fs.makedirs(fs.base)
        before_write()
        fs.write_bytes(meta_path, json.dumps(meta).encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"history store {location!r}: cannot create it ({short_error(exc)})") from None
    return meta


def _load_meta(fs: StoreFS, location: str, meta_path: PurePath) -> dict[str, Any]:
    try:
        meta = json.loads(fs.read_bytes(meta_path).decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"history store {location!r}: unreadable store.json ({short_error(exc)})") from None
    if meta.get("format") != FORMAT_NAME:
        raise ConfigError(
            f"{location.rstrip('/') + '/store.json'!r} is not a splice-monitor history store "
            f"(format={meta.get('format')!r})"
        )
    version = meta.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ConfigError(
            f"history store {location!r} has schema_version={version!r}; this splice-monitor reads "
            f"versions 1..{SCHEMA_VERSION} (upgrade splice-monitor to read newer stores)"
        )
    return meta


def _check_compatible(
    location: str, meta: dict[str, Any], concept_space: str | None, concept_names: Sequence[str] | None
) -> None:
    stored = meta["concept_space"]
    if concept_space is not None and concept_space != stored:
        raise ConfigError(
            f"history store {location!r} holds concept space {stored!r} "
            f"({meta['n_concepts']} concepts) but concept space {concept_space!r} was given; "
            f"concept spaces never mix: use another store directory"
        )
    if concept_names is not None:
        names = list(concept_names)
        if len(names) != meta["n_concepts"] or names_digest(names) != meta["concept_names_sha256"]:
            first_diff = next(
                (i for i, (a, b) in enumerate(zip(names, meta["concept_names"])) if a != b),
                min(len(names), meta["n_concepts"]),
            )
            raise ConfigError(
                f"history store {location!r} (concept space {stored!r}) has {meta['n_concepts']} concept "
                f"names; the given list has {len(names)} and differs first at index {first_diff}: the "
                f"vocabulary changed, so use a new concept space name and another store directory"
            )
