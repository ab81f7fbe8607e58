"""Progress bars for the slow steps a user waits on (model loads, dictionary builds): tqdm on stderr, drawn only
when stderr is a terminal, so logs, pipes and Ray workers stay clean."""

from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(*, total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar on stderr; ``enabled=False`` (``--quiet``) turns it off, and so does a stderr that is not a TTY."""
    from tqdm import tqdm

    fmt = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}]" if unit == "step" else None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if enabled else True,
                dynamic_ncols=True, bar_format=fmt)
