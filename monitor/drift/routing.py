"""Routing the rows of a mixed batch to their streams when the batch is held as columns (a stream number per row
into a small table of names), so no object per row is needed to split it."""

from __future__ import annotations

import numpy as np

__all__ = ["stream_groups"]


def stream_groups(stream_index: np.ndarray, stream_names: list[str]) -> list[tuple[str, np.ndarray | None]]:
    """The streams of a batch in order of first appearance, each with its rows (None: every row, the usual
    one-stream batch). Names listed twice in ``stream_names`` are one stream.

    >>> stream_groups(np.array([1, 0, 1, 2]), ["a", "b", "a"])
    [('b', array([0, 2])), ('a', array([1, 3]))]
    >>> stream_groups(np.array([0, 0]), ["a"])
    [('a', None)]
    """
    si = np.asarray(stream_index)
    if len(si) == 0:
        return []
    if len(set(stream_names)) != len(stream_names):
        first: dict[str, int] = {}
        si = np.array([first.setdefault(name, k) for k, name in enumerate(stream_names)], dtype=np.int64)[si]
    lo, hi = int(si.min()), int(si.max())
    if lo == hi:
        return [(stream_names[lo], None)]
    codes, first_row = np.unique(si, return_index=True)
    return [(stream_names[int(k)], np.flatnonzero(si == k)) for k in codes[np.argsort(first_row)]]
