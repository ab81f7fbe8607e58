"""Save and load the state of the drift monitor and its statistics as one unit: bytes first, files as thin wrappers.

Every stateful object here declares its state (``state_dict`` / ``from_state``): nested dicts of numpy arrays,
numbers, strings and lists. :func:`encode` turns such a dict into the bytes of an ``.npz`` archive that loads without
pickle, so a state blob from an object store or a Ray actor cannot run code when read. :func:`dumps` / :func:`loads`
wrap an object's state with its class name, so a blob of the wrong kind is refused with a clear error; the aggregator
keeps its restart state and the history store its backfill checkpoints through them.

>>> from monitor.drift.stats import Moments
>>> m = Moments(); m.update([1.0, 3.0])
>>> loads(dumps(m), Moments).get()["mean"]
2.0
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from monitor.atomic import atomic_write_bytes
from monitor.errors import ConfigError

__all__ = ["FORMAT", "encode", "decode", "dumps", "loads", "save", "load"]

FORMAT = "splice-monitor-state/1"

# class name -> module that defines it; imported only when a blob of that class is loaded (no import cycle with the
# modules that call dumps/loads themselves)
_CLASSES = {
    "Moments": "monitor.drift.stats",
    "ConceptMoments": "monitor.drift.stats",
    "WindowStats": "monitor.drift.stats",
    "StreamMonitor": "monitor.drift.monitor",
    "ConceptMonitor": "monitor.drift.monitor",
}


def _flatten(prefix: str, value: Any, arrays: dict[str, np.ndarray], kinds: dict[str, str]) -> None:
    if isinstance(value, dict):
        kinds[prefix] = "dict"
        for key, sub in value.items():
            if "/" in str(key):
                raise ValueError(f"state key {key!r} must not contain '/'")
            _flatten(f"{prefix}/{key}" if prefix else str(key), sub, arrays, kinds)
        return
    if value is None:
        kinds[prefix] = "none"
        return
    if isinstance(value, (bool, np.bool_)):
        kinds[prefix], arrays[prefix] = "bool", np.array(bool(value))
    elif isinstance(value, (int, np.integer)):
        kinds[prefix], arrays[prefix] = "int", np.array(int(value), dtype=np.int64)
    elif isinstance(value, (float, np.floating)):
        kinds[prefix], arrays[prefix] = "float", np.array(float(value), dtype=np.float64)
    elif isinstance(value, str):
        kinds[prefix], arrays[prefix] = "str", np.array(value, dtype=np.str_)
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"state[{prefix!r}]: object arrays cannot be saved without pickle")
        kinds[prefix], arrays[prefix] = "array", value
    elif isinstance(value, (list, tuple)):
        kinds[prefix], arrays[prefix] = "json", np.array(json.dumps(value), dtype=np.str_)
    else:
        raise TypeError(f"state[{prefix!r}]: cannot save a {type(value).__name__}")


def encode(state: dict[str, Any]) -> bytes:
    """A nested dict of arrays / scalars / strings / lists as the bytes of an ``.npz`` archive (no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    _flatten("", state, arrays, kinds)
    arrays["__manifest__"] = np.array(json.dumps({"format": FORMAT, "kinds": kinds}), dtype=np.str_)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode(blob: bytes, *, source: str = "state") -> dict[str, Any]:
    """The dict :func:`encode` wrote (read with ``allow_pickle=False``); ``source`` names the blob in errors."""
    try:
        npz = np.load(io.BytesIO(blob), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: not a splice-monitor state ({exc})") from exc
    with npz:
        if "__manifest__" not in npz.files:
            raise ConfigError(f"{source}: not a splice-monitor state (no manifest)")
        manifest = json.loads(str(npz["__manifest__"]))
        if manifest.get("format") != FORMAT:
            raise ConfigError(f"{source}: state format {manifest.get('format')!r}, expected {FORMAT!r}")
        root: dict[str, Any] = {}
        for key, kind in manifest["kinds"].items():
            if key == "":
                continue
            parts = key.split("/")
            node = root
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            leaf = parts[-1]
            if kind == "dict":
                node.setdefault(leaf, {})
            elif kind == "none":
                node[leaf] = None
            elif kind == "bool":
                node[leaf] = bool(npz[key])
            elif kind == "int":
                node[leaf] = int(npz[key])
            elif kind == "float":
                node[leaf] = float(npz[key])
            elif kind == "str":
                node[leaf] = str(npz[key])
            elif kind == "json":
                node[leaf] = json.loads(str(npz[key]))
            else:
                node[leaf] = npz[key].copy()
        return root


def dumps(obj: Any) -> bytes:
    """The state of ``obj`` (anything with ``state_dict()``), tagged with its class name, as bytes."""
    return encode({"class": type(obj).__name__, "state": obj.state_dict()})


def loads(blob: bytes, expected: type | None = None, *, source: str = "state", **kwargs: Any) -> Any:
    """Rebuild the object :func:`dumps` saved; ``expected`` refuses a blob of another class. ``kwargs`` go to
    ``from_state`` (e.g. ``on_window=`` for the monitors)."""
    data = decode(blob, source=source)
    name = data.get("class")
    if expected is not None and name != expected.__name__:
        raise ConfigError(f"{source}: holds a {name!r} state, expected {expected.__name__!r}")
    if expected is None:
        if name not in _CLASSES:
            raise ConfigError(f"{source}: holds a {name!r} state; known: {sorted(_CLASSES)}")
        import importlib

        expected = getattr(importlib.import_module(_CLASSES[name]), name)
    return expected.from_state(data["state"], **kwargs)


def save(obj: Any, path: str | Path) -> None:
    """Write :func:`dumps` of ``obj`` to ``path`` atomically (a reader sees the old state or the new one)."""
    atomic_write_bytes(path, dumps(obj))


def load(path: str | Path, expected: type | None = None, **kwargs: Any) -> Any:
    """Read a file written by :func:`save` (see :func:`loads`)."""
    return loads(Path(path).read_bytes(), expected, source=str(path), **kwargs)
