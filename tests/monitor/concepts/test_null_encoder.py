"""The ``null:D`` encoder and ``solver="off"``: the zero-cost stand-ins of the control-plane benchmark still produce
valid, deterministic embeddings and well-formed sparse codes through the normal factories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monitor.concepts.decomposer import RANDOM_CODE_L0, Decomposer, create_decomposer
from monitor.concepts.dictionary import build_dictionary
from monitor.concepts.encoders import NullEncoder, create_encoder
from monitor.errors import ConfigError


def test_null_encoder_is_built_by_name_with_its_dimension():
    enc = create_encoder("null:64", device="cpu")
    assert isinstance(enc, NullEncoder)
    assert enc.dim == 64 and enc.id == "null:64:seed0"
    assert create_encoder("null", device="cpu").dim == 512


@pytest.mark.parametrize("name", ["null:abc", "null:1", "null:-3"])
def test_null_encoder_rejects_bad_dimensions(name):
    with pytest.raises(ConfigError, match="null"):
        create_encoder(name, device="cpu")


def test_null_encoder_refuses_weights():
    with pytest.raises(ConfigError, match="no weights"):
        create_encoder("null:64", "laion2b_s34b_b79k", device="cpu")


def test_null_embeddings_are_unit_deterministic_and_distinct():
    enc = NullEncoder(32, device="cpu")
    payloads = [bytes([i, 7, 9]) * 50 for i in range(200)] + ["a caption"]
    z = enc.encode_payloads(payloads)
    assert z.shape == (201, 32) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(201))
    # the same payload always maps to the same vector, in another encoder instance too (every worker agrees)
    torch.testing.assert_close(NullEncoder(32, device="cpu").encode_payloads(payloads[:5]), z[:5])
    assert len({tuple(np.round(r, 5)) for r in z.numpy()}) == 201
    t = enc.encode_texts(["snow", "dog", "snow"])
    torch.testing.assert_close(t[0], t[2])
    assert float(t[0] @ t[1]) < 0.9


def test_null_encoder_serves_the_standard_image_path():
    enc = NullEncoder(16, device="cpu")
    a = Image.new("RGB", (8, 8), (10, 20, 30))
    b = Image.new("RGB", (8, 8), (10, 20, 31))
    z = enc.encode_images([a, b, a])
    assert z.shape == (3, 16)
    torch.testing.assert_close(z[0], z[2])
    assert not torch.allclose(z[0], z[1])


def test_null_dictionary_builds_like_any_other(tmp_path):
    enc = NullEncoder(48, device="cpu")
    d = build_dictionary(enc, [f"concept {i}" for i in range(300)], cache_dir=tmp_path)
    assert d.vectors.shape == (300, 48)
    np.testing.assert_allclose(np.linalg.norm(d.vectors, axis=1), 1.0, rtol=1e-5)


def test_solver_off_returns_random_codes_with_distinct_concepts(tmp_path):
    enc, dec = create_decomposer("null:48", vocab=[f"c{i}" for i in range(1000)], cache_dir=tmp_path,
                                 device="cpu", solver="off")
    z = enc.encode_payloads([bytes([i]) * 10 for i in range(50)])
    z[3] = float("nan")
    res = dec.decompose(z)
    codes = res.codes
    assert len(codes) == 49 and [r for r, _ in res.rejected] == [3]
    assert np.array_equal(codes.l0, np.full(49, RANDOM_CODE_L0))
    for i in range(len(codes)):
        idx, val = codes.row(i)
        assert len(set(idx.tolist())) == RANDOM_CODE_L0 and idx.min() >= 0 and idx.max() < 1000
        assert (val > 0).all()
    assert codes.converged is None and np.isnan(res.gap).all()
    assert ((codes.fidelity > 0) & (codes.fidelity <= 1)).all()


def test_solver_off_codes_are_a_function_of_the_item_not_of_the_worker(tmp_path):
    """Two workers (two decomposers) give an item the same code in any batch and position, and different items
    independent ones: a per-process generator made every worker replay one sequence, so with two workers batch
    pairs carried identical codes and the drift tests fired on the bench's stationary stream."""
    vocab = [f"c{i}" for i in range(1000)]
    enc, one = create_decomposer("null:48", vocab=vocab, cache_dir=tmp_path, device="cpu", solver="off")
    _, two = create_decomposer("null:48", vocab=vocab, cache_dir=tmp_path, device="cpu", solver="off")
    payloads = [i.to_bytes(4, "little") * 3 for i in range(400)]
    a = one.decompose(enc.encode_payloads(payloads)).codes
    b = two.decompose(enc.encode_payloads(payloads[::-1])).codes.take(np.arange(399, -1, -1))
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.values, b.values)
    assert np.array_equal(a.fidelity, b.fidelity)
    # independent items: the concept of each slot uniform over its stride (chi-square, 49 degrees of freedom: the
    # bound is its 1e-5 tail), weights uniform on [0.01, 0.3]
    assert len({tuple(a.row(i)[0].tolist()) for i in range(len(a))}) == 400
    stride = 1000 // RANDOM_CODE_L0
    offsets = a.indices.reshape(400, RANDOM_CODE_L0) - np.arange(RANDOM_CODE_L0) * stride
    counts = np.bincount(offsets.reshape(-1), minlength=stride)
    expected = offsets.size / stride
    assert len(counts) == stride and ((counts - expected) ** 2 / expected).sum() < 100
    assert 0.01 <= a.values.min() and a.values.max() <= 0.3 and abs(a.values.mean() - 0.155) < 0.01


def test_rows_whose_sum_is_not_finite_are_judged_entry_by_entry(tmp_path):
    """The finiteness check clears rows by their sum; a row whose finite entries overflow the sum is still finite
    (and then fails later for what it is), a row with +inf and -inf (sum NaN) is reported as inf."""
    enc, dec = create_decomposer("null:48", vocab=[f"c{i}" for i in range(100)], cache_dir=tmp_path,
                                 device="cpu", solver="off")
    z = enc.encode_payloads([bytes([i]) * 10 for i in range(6)])
    z[1] = 3e38  # every entry finite, the sum overflows
    z[2, 0], z[2, 1] = float("inf"), float("-inf")
    z[3, 5] = float("nan")
    res = dec.decompose(z)
    reasons = dict(res.rejected)
    assert res.kept.tolist() == [0, 4, 5] and sorted(reasons) == [1, 2, 3]
    assert "contains" not in reasons[1] and "contains inf" in reasons[2] and "contains NaN" in reasons[3]


def test_solver_off_is_validated(tmp_path):
    enc = NullEncoder(16, device="cpu")
    d = build_dictionary(enc, [f"c{i}" for i in range(40)], cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="solver must be one of"):
        Decomposer(d, solver="fast")
