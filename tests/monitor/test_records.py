"""SparseCodes row operations (slice, select, take, concat) agree with the same operations on the dense matrix."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.records import SparseCodes


def _codes(n=9, c=7, seed=0) -> SparseCodes:
    rng = np.random.default_rng(seed)
    dense = rng.random((n, c)) * (rng.random((n, c)) < 0.4)
    dense[3] = 0.0  # an empty row must survive every operation
    return SparseCodes.from_dense(dense, fidelity=rng.random(n), l1=0.25, converged=rng.random(n) < 0.8)


def _same(a: SparseCodes, dense: np.ndarray, fidelity: np.ndarray, converged: np.ndarray) -> None:
    np.testing.assert_array_equal(a.to_dense(), dense.astype(np.float32))
    np.testing.assert_array_equal(a.fidelity, fidelity)
    np.testing.assert_array_equal(a.converged, converged)
    assert a.indptr[-1] == len(a.indices) == len(a.values)


def test_slice_select_take_concat_match_the_dense_rows():
    codes = _codes()
    dense, fid, conv = codes.to_dense(), codes.fidelity, codes.converged
    _same(codes.slice(2, 6), dense[2:6], fid[2:6], conv[2:6])
    _same(codes.slice(4, 4), dense[4:4], fid[4:4], conv[4:4])
    mask = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], dtype=bool)
    _same(codes.select(mask), dense[mask], fid[mask], conv[mask])
    _same(codes.select([8, 0, 3]), dense[[0, 3, 8]], fid[[0, 3, 8]], conv[[0, 3, 8]])  # original order
    order = [8, 3, 3, 0]
    _same(codes.take(order), dense[order], fid[order], conv[order])  # given order, repeats allowed
    _same(codes.take([]), dense[:0], fid[:0], conv[:0])
    back = SparseCodes.concat([codes.slice(0, 4), codes.slice(4, 4), codes.slice(4, 9)])
    _same(back, dense, fid, conv)
    np.testing.assert_array_equal(codes.nonzero_rows(), np.nonzero(dense)[0])


def test_row_operations_name_bad_arguments():
    codes = _codes()
    with pytest.raises(ValueError, match=r"boolean mask must have shape \(9,\)"):
        codes.select(np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="different concept spaces"):
        SparseCodes.concat([codes, _codes(c=5)])
    with pytest.raises(ValueError, match="at least one"):
        SparseCodes.concat([])
