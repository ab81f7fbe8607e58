"""Progress of resumable jobs kept inside a history store: a JSON record per job (``checkpoints/JOB.json``) and opaque
state blobs beside it (e.g. a saved monitor), each replaced atomically wherever the store lives."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

import pyarrow.fs as pafs

from monitor.history.fs import StoreFS

__all__ = ["Checkpoints"]

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Checkpoints:
    """The ``checkpoints/`` folder of a store. ``before_write`` runs before anything is written (the store takes its
    writer lock there)."""

    def __init__(self, fs: StoreFS, concept_space: str, before_write: Callable[[], Any] = lambda: None) -> None:
        self._fs = fs
        self._concept_space = concept_space
        self._before_write = before_write

    def _record_path(self, job_id: str) -> PurePath:
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise ValueError(
                f"job_id={job_id!r}: use 1-128 characters from letters, digits, '.', '_' and '-' "
                f"(starting with a letter or digit)"
            )
        return self._fs.join("checkpoints", f"{job_id}.json")

    def _blob_path(self, name: str) -> PurePath:
        if not isinstance(name, str) or not _JOB_ID.match(name) or name.endswith(".json"):
            raise ValueError(
                f"checkpoint file name {name!r}: use 1-128 characters from letters, digits, '.', '_' and '-' "
                f"(starting with a letter or digit, not ending in .json, which names checkpoint records)"
            )
        return self._fs.join("checkpoints", name)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The last state saved for ``job_id``, or None when the job never saved one."""
        path = self._record_path(job_id)
        try:
            doc = json.loads(self._fs.read_bytes(path).decode("utf-8"))
        except FileNotFoundError:
            return None
        return doc["state"]

    def set(self, job_id: str, state: Mapping[str, Any]) -> None:
        """Atomically replace ``job_id``'s saved state (any JSON-serialisable mapping)."""
        path = self._record_path(job_id)
        doc = {"job_id": job_id, "updated": time.time(), "concept_space": self._concept_space, "state": dict(state)}
        try:
            data = json.dumps(doc, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"set_checkpoint({job_id!r}): state must be JSON-serialisable ({exc})") from None
        self._before_write()
        self._fs.write_bytes(path, data)

    def clear(self, job_id: str) -> None:
        path = self._record_path(job_id)
        self._before_write()
        self._fs.delete_file(path, missing_ok=True)

    def list(self) -> list[str]:
        names = (i.base_name for i in self._fs.list(self._fs.join("checkpoints")) if i.type == pafs.FileType.File)
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith("."))

    def write_file(self, name: str, data: bytes) -> None:
        path = self._blob_path(name)
        self._before_write()
        self._fs.write_bytes(path, bytes(data))

    def read_file(self, name: str) -> bytes | None:
        try:
            return self._fs.read_bytes(self._blob_path(name))
        except FileNotFoundError:
            return None

    def delete_file(self, name: str) -> None:
        path = self._blob_path(name)
        self._before_write()
        self._fs.delete_file(path, missing_ok=True)
