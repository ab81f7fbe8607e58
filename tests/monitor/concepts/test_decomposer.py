"""monitor.concepts.decomposer: decompositions name the right concepts with the real MiniLM, bad embeddings are rejected per row,
recomposition and fidelity follow the method's formulas, interventions remove what they name, and the open_clip
image path runs end to end."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from monitor.concepts import decomposer as splice
from monitor.concepts.dictionary import build_dictionary, save_mean
from monitor.errors import ConfigError
from monitor.records import SparseCodes
from monitor.concepts.solver import dual_certificate
from monitor.concepts.decomposer import Decomposer, UncalibratedMeanWarning, create_decomposer

CAPTIONS = {
    "a cat sleeping on a sofa": {"cat", "sofa"},
    "a policeman riding a motorcycle": {"policeman", "motorcycle"},
    "snow covered mountains at sunrise": {"snow", "mountain"},
    "a plate of pizza and a glass of beer": {"pizza"},
    "a dog running on the beach": {"dog", "beach"},
}


@pytest.fixture(scope="module")
def caption_result(minilm_decomposer):
    encoder, dec = minilm_decomposer
    emb = encoder.encode_texts(list(CAPTIONS))
    return emb, dec.decompose(emb)


@pytest.mark.parametrize("i, caption", list(enumerate(CAPTIONS)))
def test_real_minilm_names_the_caption_concepts(minilm_decomposer, caption_result, i, caption):
    _, dec = minilm_decomposer
    _, result = caption_result
    top = [name for name, _ in dec.top_concepts(result.codes.row(i), 5)]
    assert CAPTIONS[caption] <= set(top), f"{caption!r} -> {top}"


def test_decomposition_is_sparse_faithful_and_certified(minilm_decomposer, caption_result):
    _, dec = minilm_decomposer
    emb, result = caption_result
    codes = result.codes
    assert len(codes) == len(CAPTIONS) and codes.n_concepts == 10_000
    assert np.all((codes.l0 >= 2) & (codes.l0 <= 60)), codes.l0
    assert np.all(codes.fidelity > 0.6), codes.fidelity
    assert result.converged.all() and np.all(result.gap <= 1e-4)
    # certificate recomputed independently on the full 10,000-concept problem
    W = torch.as_tensor(codes.to_dense())
    _, gap, _ = dual_certificate(dec.dictionary.tensor(), dec.center(F.normalize(emb, dim=-1)), W, 0.25)
    assert float(gap.max()) <= 1e-4


def test_recompose_and_fidelity_follow_the_method(minilm_decomposer, caption_result):
    _, dec = minilm_decomposer
    emb, result = caption_result
    W = torch.as_tensor(result.codes.to_dense())
    D = dec.dictionary.tensor()
    mu = torch.as_tensor(dec.dictionary.vocab_mean)
    zhat = F.normalize(F.normalize(W @ D, dim=-1) + mu, dim=-1)
    assert torch.allclose(dec.recompose(result.codes), zhat, atol=1e-5)
    cos = (zhat * F.normalize(emb, dim=-1)).sum(-1)
    assert np.allclose(result.codes.fidelity, cos.numpy(), atol=1e-5)
    assert np.allclose(dec.fidelity(emb, W).numpy(), cos.numpy(), atol=1e-5)


def test_bad_embeddings_are_rejected_and_the_rest_kept_in_order(minilm_decomposer, caption_result):
    _, dec = minilm_decomposer
    emb, clean = caption_result
    bad = torch.cat([emb[:2], torch.full((1, 384), float("nan")), emb[2:3], torch.zeros(1, 384),
                     torch.full((1, 384), float("inf")), emb[3:]])
    result = dec.decompose(bad.numpy())  # numpy input, as the workers pass it
    assert result.kept.tolist() == [0, 1, 3, 6, 7] and result.n_inputs == 8
    assert [row for row, _ in result.rejected] == [2, 4, 5]
    details = dict(result.rejected)
    assert "NaN" in details[2] and "zero norm" in details[4] and "inf" in details[5]
    assert result.reason == "bad_embedding"
    assert np.array_equal(result.codes.to_dense(), clean.codes.to_dense())


def test_all_bad_batch_gives_empty_codes(minilm_decomposer):
    _, dec = minilm_decomposer
    result = dec.decompose(torch.zeros(2, 384))
    assert len(result.codes) == 0 and result.kept.size == 0 and len(result.rejected) == 2


def test_dimension_mismatch_prints_both_shapes(minilm_decomposer):
    _, dec = minilm_decomposer
    with pytest.raises(ConfigError, match=r"shape \(2, 512\).*shape \(10000, 384\)"):
        dec.decompose(torch.randn(2, 512))
    with pytest.raises(ConfigError, match=r"mean has shape \(512,\).*\(10000, 384\)"):
        Decomposer(dec.dictionary, np.zeros(512, np.float32))


def test_target_l0_mode_hits_the_requested_sparsity(minilm_decomposer, caption_result):
    _, dec = minilm_decomposer
    emb, _ = caption_result
    targeted = Decomposer(dec.dictionary, dec.dictionary.vocab_mean, target_l0=5)
    codes = targeted.decompose(emb).codes
    assert np.mean(codes.l0 == 5) >= 0.8 and np.all(np.abs(codes.l0 - 5) <= 2), codes.l0
    assert not np.allclose(codes.l1, 0.25)


def test_top_concepts_from_row_dense_and_sparse_agree(minilm_decomposer, caption_result):
    _, dec = minilm_decomposer
    _, result = caption_result
    row = dec.top_concepts(result.codes.row(0), 3)
    assert row == dec.top_concepts(result.codes.to_dense()[0], 3) == dec.top_concepts(result.codes.take([0]), 3)
    assert [w for _, w in row] == sorted((w for _, w in row), reverse=True)


def test_intervention_removes_the_named_concept(minilm_decomposer, caption_result):
    encoder, dec = minilm_decomposer
    emb, result = caption_result
    cat = dec.concept_index("cat")
    assert result.codes.to_dense()[0, cat] > 0
    out = dec.intervene(emb[:1], suppress=["cat"])
    assert float(out.weights[0, cat]) == 0.0 and out.removed_weight[0] > 0
    before = dec.recompose(result.codes.take([0]))
    cat_text = F.normalize(encoder.encode_texts(["a cat"]), dim=-1)
    assert float(out.embeddings @ cat_text.T) < float(before @ cat_text.T) - 0.05
    sofa_text = F.normalize(encoder.encode_texts(["a sofa"]), dim=-1)
    assert float(out.embeddings @ sofa_text.T) > 0.3  # the rest of the scene survives
    # weights and codes are accepted too, and give the same result
    same = dec.intervene(result.codes.take([0]), "cat")
    assert torch.allclose(same.embeddings, out.embeddings, atol=1e-5)


def test_unknown_concept_lists_close_matches(minilm_decomposer):
    _, dec = minilm_decomposer
    with pytest.raises(ConfigError, match="'catt' is not in the vocabulary.*close matches: .*cat"):
        dec.intervene(torch.zeros(1, dec.n_concepts), ["catt"])


def test_properties_describe_the_concept_space(minilm_decomposer):
    encoder, dec = minilm_decomposer
    assert dec.n_concepts == len(dec.concept_names) == 10_000 and dec.dim == encoder.dim == 384
    assert dec.concept_space.startswith("cs-") and dec.concept_space == dec.dictionary.concept_space


def test_uncalibrated_mean_warns_once(minilm_decomposer, monkeypatch):
    _, dec = minilm_decomposer
    monkeypatch.setattr(splice, "_warned_spaces", set())
    with pytest.warns(UncalibratedMeanWarning, match="zero mean.*splice-monitor calibrate") as record:
        Decomposer(dec.dictionary, None)
        Decomposer(dec.dictionary, None)
    assert len([w for w in record if w.category is UncalibratedMeanWarning]) == 1


def test_create_decomposer_uses_calibrated_mean_and_refuses_a_foreign_one(splice_cache_dir, tmp_path):
    enc_id = None
    vocab = ["cat", "dog", "sofa", "snow", "car", "beach"]
    encoder, dec = create_decomposer("minilm", vocab=vocab, mean="vocab", cache_dir=splice_cache_dir, device="cpu")
    enc_id = encoder.id
    mean = np.asarray(dec.dictionary.vocab_mean) * 0.5
    good = save_mean(tmp_path / "good.npy", mean, encoder_id=enc_id, n=3, modality="text")
    _, dec2 = create_decomposer("minilm", vocab=vocab, mean=str(good), cache_dir=splice_cache_dir, device="cpu")
    assert torch.allclose(dec2.mean, torch.as_tensor(mean)) and dec2.mean_source == str(good)
    foreign = save_mean(tmp_path / "foreign.npy", mean, encoder_id="open_clip:ViT-B-32:openai", n=3, modality="image")
    with pytest.raises(ConfigError, match="calibrated with encoder 'open_clip:ViT-B-32:openai'"):
        create_decomposer("minilm", vocab=vocab, mean=str(foreign), cache_dir=splice_cache_dir, device="cpu")


def test_bad_l1_and_target_are_config_errors(minilm_decomposer):
    _, dec = minilm_decomposer
    for kwargs, match in (({"l1": 0}, "l1 must be"), ({"l1": float("nan")}, "l1 must be"),
                          ({"target_l0": 0}, "target_l0 must be"), ({"target_l0": 2.5}, "target_l0 must be")):
        with pytest.raises(ConfigError, match=match):
            Decomposer(dec.dictionary, dec.dictionary.vocab_mean, **kwargs)


def test_open_clip_image_path_end_to_end(tiny_clip, tiny_vocab, tmp_path):
    from monitor.concepts.images import decode_image

    dictionary = build_dictionary(tiny_clip, tiny_vocab, template="a photo of {}", cache_dir=tmp_path)
    assert dictionary.vectors.shape == (len(tiny_vocab), 384)
    rng = np.random.default_rng(3)
    payloads = []
    for i, mode in enumerate(["RGB", "RGBA", "L", "CMYK"]):
        img = Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).convert(mode)
        import io

        buf = io.BytesIO()
        img.save(buf, "TIFF" if mode == "CMYK" else "PNG")
        payloads.append(buf.getvalue())
    images = [decode_image(p) for p in payloads]
    emb = tiny_clip.encode_preprocessed(torch.stack([tiny_clip.preprocess(im) for im in images]))
    # random weights: calibrate the mean on these very images so centring is meaningful
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedMeanWarning)
        dec = Decomposer(dictionary, F.normalize(emb, dim=-1).mean(0), l1=0.01)
    result = dec.decompose(emb)
    assert isinstance(result.codes, SparseCodes) and len(result.codes) == 4 and result.kept.tolist() == [0, 1, 2, 3]
    assert np.all(result.codes.l0 >= 1) and result.converged.all()
    assert np.all((result.codes.fidelity > 0) & (result.codes.fidelity <= 1.0 + 1e-6))
    assert dec.top_concepts(result.codes.row(0), 3)[0][0] in tiny_vocab


def test_docs_python_example_runs(splice_cache_dir, monkeypatch, capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "concepts.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    monkeypatch.setenv("SPLICE_MONITOR_CACHE", str(splice_cache_dir))
    for block in blocks:
        exec(compile(block, "docs/concepts.md", "exec"), {})
    assert "True" in capsys.readouterr().out


def test_sparse_extraction_matches_dense_including_empty_rows():
    W = torch.zeros(4, 30)
    W[0, [3, 17, 5]] = torch.tensor([0.5, 0.1, 0.2])
    W[2, 29] = 1.0
    idx, vals = splice._sparse_rows(W)
    codes = splice._codes(idx, vals, torch.zeros(4), torch.full((4,), 0.25), torch.ones(4, dtype=torch.bool), 30)
    assert np.array_equal(codes.to_dense(), W.numpy())
    assert codes.l0.tolist() == [3, 0, 1, 0] and codes.indices[:3].tolist() == [3, 5, 17]
    empty = splice._codes(*splice._sparse_rows(torch.zeros(2, 30)), torch.zeros(2), torch.ones(2),
                          torch.ones(2, dtype=torch.bool), 30)
    assert empty.l0.tolist() == [0, 0] and len(empty.indices) == 0


def test_penalty_above_every_correlation_gives_empty_codes_with_mean_fidelity(minilm_decomposer, caption_result):
    _, dec = minilm_decomposer
    emb, _ = caption_result
    strict = Decomposer(dec.dictionary, dec.dictionary.vocab_mean, l1=50.0)
    result = strict.decompose(emb)
    assert result.codes.l0.tolist() == [0] * len(CAPTIONS)
    mu = F.normalize(torch.as_tensor(dec.dictionary.vocab_mean), dim=0)
    assert np.allclose(result.codes.fidelity, (F.normalize(emb, dim=-1) @ mu).numpy(), atol=1e-5)
