"""monitor.concepts.encoders: the factory resolves every kind of model name, never falls back to random weights when real
ones were asked for, gives stable ids, and encodes images and texts to (n, dim) float32."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from monitor.concepts.encoders import RandomWeightsWarning, create_encoder, list_models
from monitor.errors import ConfigError


def _images(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((40 + 8 * i, 56, 3)) * 255).astype(np.uint8)) for i in range(n)]


def test_list_models_names_minilm_st_and_open_clip_architectures():
    names = list_models()
    assert "minilm" in names and "ViT-B-32" in names and any(n.startswith("st:") for n in names)


def test_unknown_model_lists_valid_names_and_suggests_close_ones():
    with pytest.raises(ConfigError) as info:
        create_encoder("ViT-B-23")
    msg = str(info.value)
    assert "'ViT-B-23'" in msg and "Did you mean" in msg and "ViT-B-32" in msg and "minilm" in msg


def test_unknown_pretrained_tag_lists_valid_tags():
    with pytest.raises(ConfigError) as info:
        create_encoder("ViT-B-32", "laion9000")
    assert "laion2b_s34b_b79k" in str(info.value) and "local checkpoint" in str(info.value)


def test_missing_checkpoint_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*local open_clip checkpoint"):
        create_encoder("ViT-S-32", str(tmp_path / "weights.pt"))


def test_failed_download_is_config_error_not_random_weights(tmp_path, monkeypatch):
    # a known tag with an empty cache and no network: must fail loudly and explain the offline route
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        with pytest.raises(ConfigError, match="could not get weights 'openai'.*--pretrained /path/to"):
            create_encoder("ViT-B-32", "openai", device="cpu")


def test_garbage_checkpoint_is_config_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"definitely not a state dict")
    with pytest.raises(ConfigError, match="cannot load checkpoint"):
        create_encoder("ViT-S-32", str(path), device="cpu")


def test_random_weights_warn_only_when_not_asked_for_explicitly():
    with pytest.warns(RandomWeightsWarning, match="pretrained=None"):
        implicit = create_encoder("ViT-S-32", None, device="cpu")
    assert implicit.id == "open_clip:ViT-S-32:random-seed0"


def test_random_weights_are_seeded_so_every_process_builds_the_same_model(tiny_clip):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        again = create_encoder("ViT-S-32", "random", device="cpu")
    texts = ["a cat", "snow on a street"]
    assert torch.equal(tiny_clip.encode_texts(texts), again.encode_texts(texts))
    assert again.id == tiny_clip.id


def test_open_clip_image_and_text_paths(tiny_clip):
    assert tiny_clip.supports_images and tiny_clip.supports_texts and tiny_clip.dim == 384
    imgs = _images(3)
    emb = tiny_clip.encode_images(imgs)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32 and torch.isfinite(emb).all()
    # the split path the workers use gives the same embeddings
    batch = torch.stack([tiny_clip.preprocess(im) for im in imgs])
    assert batch.shape == (3, 3, 224, 224)
    assert torch.allclose(tiny_clip.encode_preprocessed(batch), emb, atol=1e-5)
    txt = tiny_clip.encode_texts(["a cat"] * 10)  # more than batch_size=8: batching must not change results
    assert txt.shape == (10, 384) and torch.allclose(txt[0], txt[9], atol=1e-5)
    assert tiny_clip.encode_texts([]).shape == (0, 384)


def test_local_checkpoint_loads_and_is_identified_by_content(tiny_clip, tmp_path):
    path = tmp_path / "vit_s_32.pt"
    torch.save(tiny_clip._net.state_dict(), path)
    loaded = create_encoder("ViT-S-32", str(path), device="cpu")
    assert loaded.id.startswith("open_clip:ViT-S-32:file-sha256:")
    assert torch.allclose(loaded.encode_texts(["a dog"]), tiny_clip.encode_texts(["a dog"]), atol=1e-6)


def test_minilm_is_real_text_only_and_has_stable_id(minilm_encoder, minilm_path):
    enc = minilm_encoder
    assert enc.dim == 384 and enc.supports_texts and not enc.supports_images
    emb = enc.encode_texts(["a cat sleeping on a sofa", "a kitten napping on a couch", "stock market report"])
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    e = torch.nn.functional.normalize(emb, dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3  # real semantics: paraphrase closer than unrelated text
    with pytest.raises(ConfigError, match="texts only"):
        enc.encode_images(_images(1))
    st = create_encoder(f"st:{minilm_path}", device="cpu")
    assert st.id.split(":")[-1] == enc.id.split(":")[-1]  # same weights, same digest
    assert torch.allclose(st.encode_texts(["a cat"]), enc.encode_texts(["a cat"]), atol=1e-6)


def test_loading_a_local_st_model_leaves_the_hub_environment_alone(minilm_path, monkeypatch):
    # a process-wide HF_HUB_OFFLINE would break a later open_clip pretrained download in the same process
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    before = dict(os.environ)
    enc = create_encoder(f"st:{minilm_path}", device="cpu")
    assert enc.dim == 384
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    assert dict(os.environ) == before


def test_st_directory_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="not a sentence-transformers model directory"):
        create_encoder(f"st:{tmp_path}")


def test_minilm_rejects_pretrained_argument():
    with pytest.raises(ConfigError, match="weights built in"):
        create_encoder("minilm", "openai")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "fp8"}, "precision must be one of"),
        ({"precision": "fp16", "device": "cpu"}, "fp16' needs a CUDA device"),
        ({"device": "tpu:9"}, "device"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_bad_options_name_the_parameter(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_encoder("ViT-S-32", "random", **kwargs)
