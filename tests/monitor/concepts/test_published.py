"""SpLiCE's own data: its vocabularies read with the reference's "last N lines" convention, and its published image
means, picked by model and pretrained tag (checked here without any weights)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from monitor.concepts.decomposer import resolve_mean
from monitor.concepts.published import PUBLISHED_MEANS, load_published_mean, published_mean
from monitor.concepts.vocab import named_vocabulary, resolve_vocabulary
from monitor.errors import ConfigError

DATA = resources.files("monitor.concepts").joinpath("data", "splice")


def _lines(name: str) -> list[str]:
    return DATA.joinpath(name).read_text(encoding="utf-8").splitlines()


def test_license_and_notice_ship_with_the_data():
    assert "Apache License" in DATA.joinpath("LICENSE").read_text()
    notice = DATA.joinpath("NOTICE").read_text()
    assert "github.com/AI4LIFE-GROUP/SpLiCE" in notice and "Apache License" in notice


def test_laion_is_the_last_10000_lines_most_frequent_last():
    vocab = resolve_vocabulary("laion")
    assert vocab.concepts == tuple(line.strip() for line in _lines("laion.txt")[-10_000:])
    assert vocab.concepts[-5:] == ("in", "and", "the", "of", "-")
    assert "#" in vocab  # a line the file parser would take for a comment is a concept in the reference


def test_size_takes_the_last_n_lines_in_every_spelling():
    last = tuple(_lines("laion.txt")[-5000:])
    assert resolve_vocabulary("laion:5000").concepts == last
    assert resolve_vocabulary("laion", size=5000).concepts == last
    assert named_vocabulary("laion", 5000).hash == resolve_vocabulary("laion:5000").hash
    with pytest.raises(ConfigError, match="must be an integer in"):
        named_vocabulary("laion", 40_000)
    with pytest.raises(ConfigError, match="names size 5000 but a size of 300"):
        resolve_vocabulary("laion:5000", size=300)


def test_bigrams_default_holds_the_words_and_the_bigrams():
    vocab = resolve_vocabulary("laion-bigrams")
    assert len(vocab) == 15_000
    multi = [c for c in vocab if " " in c]
    assert len(multi) == 5001 and "traffic light" in vocab
    # the bigrams lead the file, so SpLiCE's 10,000-line default of the other lists would drop all but one of them
    assert [c for c in resolve_vocabulary("laion-bigrams:10000") if " " in c] == ["vector image"]


def test_mscoco_drops_its_blank_line():
    lines = _lines("mscoco.txt")[-10_000:]
    assert sum(1 for line in lines if not line.strip()) == 1
    vocab = resolve_vocabulary("mscoco")
    assert len(vocab) == 9_999 and "" not in vocab and vocab.concepts[-1] == "a"


def test_a_file_path_is_not_a_name(tmp_path, monkeypatch):
    path = tmp_path / "laion.txt"
    path.write_text("cat\ndog\n", encoding="utf-8")
    assert resolve_vocabulary(str(path)).concepts == ("cat", "dog")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "laion").write_text("cat\n", encoding="utf-8")
    assert len(resolve_vocabulary("laion")) == 10_000  # the name wins ...
    assert resolve_vocabulary("./laion").concepts == ("cat",)  # ... and ./ reaches the file
    with pytest.raises(ConfigError, match="applies to the named vocabularies"):
        resolve_vocabulary(str(path), size=10)


def test_published_mean_is_picked_by_model_and_tag():
    assert published_mean("ViT-B-32", "openai").file == "means_clip_ViT-B-32_image.npy"
    assert published_mean("ViT-B-16", "openai").file == "means_clip_ViT-B-16_image.npy"
    assert published_mean("RN50", "openai").file == "means_clip_RN50_image.npy"
    assert published_mean("ViT-B-32", "laion2b_s34b_b79k").file == "means_open_clip_ViT-B-32_image.npy"
    for model, pretrained in [("ViT-B-32", "random"), ("ViT-B-32", None), ("ViT-B-32", "/models/vit.safetensors"),
                              ("ViT-B-16", "laion2b_s34b_b88k"), ("ViT-L-14", "openai"), ("minilm", None)]:
        assert published_mean(model, pretrained) is None, (model, pretrained)


def test_published_means_are_means_of_unit_embeddings_with_the_model_dimension():
    # a mean of L2-normalised vectors has norm below 1 (about sqrt of the mean pairwise cosine); a raw CLIP
    # embedding mean would have norm near 10, a normalised mean exactly 1. Centring subtracts it from unit vectors.
    for spec in PUBLISHED_MEANS.values():
        mu = load_published_mean(spec)
        assert mu.shape == (spec.dim,) and mu.dtype == np.float32
        assert 0.5 < float(np.linalg.norm(mu)) < 0.75, spec.file


def _resolve(mean, model, pretrained, *, dim=512, images=True):
    return resolve_mean(mean, model=model, pretrained=pretrained, encoder_id=f"open_clip:{model}:{pretrained}",
                        dim=dim, supports_images=images, vocab_mean=np.full(dim, 0.01, np.float32))


def test_resolution_uses_the_published_mean_only_when_nothing_else_was_asked_for(tmp_path):
    mu, source, uncalibrated = _resolve(None, "ViT-B-32", "openai")
    expected = np.load(DATA.joinpath("means_clip_ViT-B-32_image.npy"), allow_pickle=False)
    np.testing.assert_array_equal(mu, expected)
    assert "means_clip_ViT-B-32_image.npy" in source and "published" in source and uncalibrated is None

    mu, source, uncalibrated = _resolve(None, "ViT-B-32", "random")
    assert mu is None and uncalibrated == "a zero mean (no centring of inputs)"

    own = tmp_path / "mine.npy"
    np.save(own, np.ones(512, np.float32))
    with pytest.warns(UserWarning, match="no .json sidecar"):
        mu, source, _ = _resolve(str(own), "ViT-B-32", "openai")
    assert source == str(own) and float(mu[0]) == 1.0  # an explicit mean always wins

    mu, source, uncalibrated = _resolve("vocab", "ViT-B-32", "openai")
    assert source == "vocabulary text mean" and float(mu[0]) == pytest.approx(0.01)

    mu, source, uncalibrated = _resolve(None, "minilm", None, dim=384, images=False)
    assert "vocabulary text mean" in source and uncalibrated == "the vocabulary's text mean"
