"""The comparison that keeps the built-in vocabulary as the default: on the demo generator's captions through the real
MiniLM model, it names the caption's topic at least as often as SpLiCE's laion vocabulary (docs/concepts.md)."""

from __future__ import annotations

import pytest

from monitor.concepts.decomposer import Decomposer
from monitor.concepts.dictionary import build_dictionary
from monitor.concepts.evaluation import TOPIC_WORDS, topic_captions, topic_scores
from monitor.concepts.vocab import DEFAULT_VOCAB, resolve_vocabulary


@pytest.fixture(scope="module")
def scores(minilm_encoder, splice_cache_dir):
    captions = topic_captions(400, seed=0)
    out = {}
    for name in ("builtin", "laion"):
        dictionary = build_dictionary(minilm_encoder, resolve_vocabulary(name), cache_dir=splice_cache_dir)
        dec = Decomposer(dictionary, dictionary.vocab_mean, device="cpu", mean_source="vocab")
        out[name] = topic_scores(minilm_encoder, dec, captions, vocabulary=name)
    return out


def test_captions_cover_every_topic_evenly():
    captions = topic_captions(400, seed=0)
    counts = {t: sum(1 for topic, _ in captions if topic == t) for t in TOPIC_WORDS}
    assert set(counts) == set(TOPIC_WORDS) and min(counts.values()) >= 60


def test_default_vocabulary_names_topics_at_least_as_well_as_laion(scores):
    best, laion = scores[DEFAULT_VOCAB], scores["laion"]
    assert best.n_captions == laion.n_captions == 400
    assert best.top1_hit >= laion.top1_hit
    assert best.top3_hit >= laion.top3_hit
    assert best.top5_precision >= laion.top5_precision


def test_both_vocabularies_name_the_topic_of_almost_every_caption(scores):
    for score in scores.values():
        assert score.top3_hit > 0.9, score
        assert score.top5_other_topic < 0.05, score
        assert all(rate > 0.8 for rate in score.per_topic_top3.values()), score
