"""monitor.concepts.dictionary: the dictionary is built exactly as SpLiCE says, cached under (encoder id, vocabulary hash,
template) and rebuilt when any of them changes; modality means round-trip safely and refuse the wrong encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monitor.concepts.dictionary import (
    MeanAccumulator,
    build_dictionary,
    concept_space_id,
    load_dictionary,
    load_mean,
    save_mean,
)
from monitor.concepts.encoders import Encoder
from monitor.errors import ConfigError
from monitor.concepts.vocab import Vocabulary


class CountingEncoder(Encoder):
    """The real MiniLM encoder behind a counter (and an optional different id), to see when encoding happens."""

    supports_texts = True

    def __init__(self, inner, id_suffix: str = "") -> None:
        self.inner = inner
        self.id = inner.id + id_suffix
        self.dim = inner.dim
        self.device = inner.device
        self.batch_size = inner.batch_size
        self.texts_encoded = 0

    def encode_texts(self, texts):
        self.texts_encoded += len(texts)
        return self.inner.encode_texts(texts)


@pytest.fixture
def counting(minilm_encoder):
    return CountingEncoder(minilm_encoder)


def test_dictionary_is_normalised_centred_and_normalised_again(counting, tiny_vocab, tmp_path):
    d = build_dictionary(counting, tiny_vocab, cache_dir=tmp_path)
    raw = torch.nn.functional.normalize(counting.inner.encode_texts(list(tiny_vocab)).double(), dim=-1)
    mean = raw.mean(0)
    expected = torch.nn.functional.normalize(raw - mean, dim=-1)
    assert d.vectors.shape == (len(tiny_vocab), 384) and d.vectors.dtype == np.float32
    assert np.allclose(d.vectors, expected.numpy(), atol=1e-5)
    assert np.allclose(d.vocab_mean, mean.numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(d.vectors, axis=1), 1.0, atol=1e-5)
    assert d.concept_names == list(tiny_vocab)


def test_same_key_loads_from_cache_without_encoding(counting, tiny_vocab, tmp_path):
    first = build_dictionary(counting, tiny_vocab, cache_dir=tmp_path)
    assert counting.texts_encoded == len(tiny_vocab) and first.meta["from_cache"] is False
    second = build_dictionary(counting, tiny_vocab, cache_dir=tmp_path)
    assert counting.texts_encoded == len(tiny_vocab), "cache hit must not re-encode"
    assert second.meta["from_cache"] is True
    assert np.array_equal(first.vectors, second.vectors)
    assert second.concept_space == first.concept_space


def test_changing_vocabulary_template_or_encoder_rebuilds(counting, tiny_vocab, tmp_path):
    base = build_dictionary(counting, tiny_vocab, cache_dir=tmp_path)
    n = len(tiny_vocab)
    other_vocab = Vocabulary(tiny_vocab.concepts[:-1] + ("umbrella",))
    v2 = build_dictionary(counting, other_vocab, cache_dir=tmp_path)
    assert counting.texts_encoded == 2 * n and v2.concept_space != base.concept_space
    t2 = build_dictionary(counting, tiny_vocab, template="a photo of {}", cache_dir=tmp_path)
    assert counting.texts_encoded == 3 * n and t2.concept_space != base.concept_space
    assert not np.allclose(t2.vectors, base.vectors)
    other_encoder = CountingEncoder(counting.inner, id_suffix=":v2")
    e2 = build_dictionary(other_encoder, tiny_vocab, cache_dir=tmp_path)
    assert other_encoder.texts_encoded == n and e2.concept_space != base.concept_space
    assert len(list(tmp_path.glob("dict-*.safetensors"))) == 4
    # and each of them is a cache hit now
    for vocab, template in ((tiny_vocab, None), (other_vocab, None), (tiny_vocab, "a photo of {}")):
        build_dictionary(counting, vocab, template=template, cache_dir=tmp_path)
    assert counting.texts_encoded == 3 * n


def test_corrupt_cache_entry_is_rebuilt(counting, tiny_vocab, tmp_path):
    d = build_dictionary(counting, tiny_vocab, cache_dir=tmp_path)
    path = tmp_path / f"dict-{d.concept_space[3:]}.safetensors"
    path.write_bytes(b"\x00" * 100)
    again = build_dictionary(counting, tiny_vocab, cache_dir=tmp_path)
    assert again.meta["from_cache"] is False and np.allclose(again.vectors, d.vectors)
    assert load_dictionary(path).meta["from_cache"] is True


def test_default_cache_dir_follows_environment(counting, tiny_vocab, tmp_path, monkeypatch):
    monkeypatch.setenv("SPLICE_MONITOR_CACHE", str(tmp_path / "envcache"))
    build_dictionary(counting, tiny_vocab)
    assert len(list((tmp_path / "envcache").glob("dict-*.safetensors"))) == 1


def test_saved_dictionary_is_safetensors_with_its_key(counting, tiny_vocab, tmp_path):
    from safetensors import safe_open

    d = build_dictionary(counting, tiny_vocab, template="a {}", cache_dir=tmp_path)
    path = d.save(tmp_path / "exported.safetensors")
    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata()
    assert meta["encoder_id"] == counting.id and meta["vocab_hash"] == tiny_vocab.hash
    assert json.loads(meta["template"]) == "a {}"
    loaded = load_dictionary(path)
    assert loaded.concept_space == d.concept_space == concept_space_id(counting.id, tiny_vocab.hash, "a {}")
    not_dict = tmp_path / "x.npy"
    np.save(not_dict, np.zeros(3))
    with pytest.raises(ConfigError, match="not a splice-monitor dictionary"):
        load_dictionary(not_dict)


def test_vocabulary_and_shape_must_agree():
    from monitor.concepts.dictionary import ConceptDictionary

    with pytest.raises(ConfigError, match=r"shape \(3, 4\) does not match vocabulary of 2"):
        ConceptDictionary(np.zeros((3, 4), np.float32), Vocabulary(("a", "b")), "enc", None, np.zeros(4, np.float32))


# -- modality mean --------------------------------------------------------------------------------------------------


def test_mean_accumulator_merge_equals_sequential_and_skips_bad_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    x[3] = np.nan
    x[7] = 0.0
    seq = MeanAccumulator()
    seq.update(x)
    a, b = MeanAccumulator(), MeanAccumulator()
    a.update(x[:20])
    b.update(x[20:])
    a += b
    assert seq.n == a.n == 48 and seq.skipped == a.skipped == 2
    assert np.allclose(seq.get(), a.get())
    good = np.delete(x, [3, 7], axis=0)
    assert np.allclose(seq.get(), (good / np.linalg.norm(good, axis=1, keepdims=True)).mean(0), atol=1e-6)
    with pytest.raises(ConfigError, match="no valid embeddings"):
        MeanAccumulator(4).get()


def test_mean_round_trips_with_its_encoder_id(tmp_path):
    mean = np.linspace(-1, 1, 16, dtype=np.float32)
    path = save_mean(tmp_path / "m.npy", mean, encoder_id="enc-A", n=10, modality="image")
    loaded, info = load_mean(path, encoder_id="enc-A", dim=16)
    assert np.array_equal(loaded, mean) and info["n"] == 10 and info["modality"] == "image"
    with pytest.raises(ConfigError, match="calibrated with encoder 'enc-A', not 'enc-B'"):
        load_mean(path, encoder_id="enc-B")
    with pytest.raises(ConfigError, match=r"shape \(16,\).*dimension is 512"):
        load_mean(path, dim=512)


def test_mean_file_never_unpickles(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="not a .npy array file"):
        load_mean(path)
    with pytest.raises(ConfigError, match="does not exist.*splice-monitor calibrate"):
        load_mean(tmp_path / "absent.npy")


class _Terminal:
    """A stderr that says it is a terminal, so tqdm draws its bar into it."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    @property
    def text(self) -> str:
        return "".join(self.parts)


def test_a_build_draws_a_progress_bar_on_a_terminal_only(counting, tiny_vocab, tmp_path, monkeypatch, capsys):
    import sys

    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    build_dictionary(counting, tiny_vocab, cache_dir=tmp_path, use_cache=False)
    assert "building the 40-concept dictionary (st:all-MiniLM-L6-v2)" in term.text and "40/40" in term.text

    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    build_dictionary(counting, tiny_vocab, cache_dir=tmp_path, use_cache=False, progress=False)
    assert quiet.text == ""

    monkeypatch.undo()  # back to pytest's captured (not a terminal) stderr
    build_dictionary(counting, tiny_vocab, cache_dir=tmp_path, use_cache=False)
    assert "building" not in capsys.readouterr().err
