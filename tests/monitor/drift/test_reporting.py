"""What an alarm reports at a step: the sparse stand-ins the quiet-batch path hands to the alarm book."""

from __future__ import annotations

import numpy as np

from monitor.drift.reporting import AtFew


def test_at_few_reads_like_the_dense_array_it_stands_for():
    dense = np.zeros((4, 50))
    dense[1, 7], dense[3, 49] = 2.5, 1e-300
    at = AtFew(dense.shape, [(1, 7), (3, 49)], np.array([2.5, 1e-300]))
    for h, j in [(1, 7), (3, 49), (0, 7), (2, 0)]:
        assert at[h, j] == dense[h, j] and at[np.int64(h), np.int64(j)] == dense[h, j]
    col = AtFew((50,), [4, 9], np.array([0.25, 3.0]))
    assert (col[4], col[np.int64(9)], col[10]) == (0.25, 3.0, 0.0)
    assert at.shape == (4, 50) and col.shape == (50,)
