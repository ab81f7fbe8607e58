"""The worker core without Ray: captions and images in, codes aligned with their items out, bad items as dead
letters, and the result independent of how the batch is chunked for encoding."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.errors import ConfigError
from monitor.records import ItemMeta
from workers.core import Worker, WorkerConfig
from workers.items import WorkItem

CAPTIONS = ["a skier on a snowy mountain in deep snow", "a red car on a busy street at rush hour",
            "a chef cooking pasta in a kitchen", "children building a sand castle on the beach"]


@pytest.fixture(scope="module")
def text_worker(splice_cache_dir, tmp_path_factory):
    vocab = tmp_path_factory.mktemp("v") / "vocab.txt"
    vocab.write_text("\n".join(["snow", "mountain", "ski", "car", "street", "traffic", "kitchen", "chef", "pasta",
                                "beach", "sand", "ocean", "dog", "cat", "music", "money", "politics", "church"]))
    worker = Worker.create(WorkerConfig(model="minilm", vocab=str(vocab), cache_dir=str(splice_cache_dir),
                                        mean="vocab", encode_batch=2))
    yield worker
    worker.close()


def _items(payloads, kind="text"):
    return [WorkItem(meta=ItemMeta(id=f"i{k}", timestamp=float(k)), payload=p, kind=kind, ref=f"r{k}")
            for k, p in enumerate(payloads)]


def test_captions_decompose_into_their_own_concepts_in_input_order(text_worker):
    part = text_worker.process(_items(CAPTIONS))
    assert [m.id for m in part.items] == ["i0", "i1", "i2", "i3"] and not part.dead_letters
    names = text_worker.concept_names
    top = []
    for r in range(len(part.items)):
        idx, w = part.codes.row(r)
        top.append(names[idx[np.argmax(w)]])
    assert top[0] in ("snow", "ski", "mountain") and top[1] in ("car", "street", "traffic")
    assert top[2] in ("kitchen", "chef", "pasta") and top[3] in ("beach", "sand", "ocean")
    assert set(part.timings) == {"read_s", "decode_wait_s", "encode_s", "decompose_s", "total_s"}


def test_chunking_for_the_encoder_does_not_change_the_codes(text_worker):
    chunked = text_worker.process(_items(CAPTIONS))  # encode_batch=2: two encoder calls
    text_worker.encode_batch = 64
    try:
        whole = text_worker.process(_items(CAPTIONS))
    finally:
        text_worker.encode_batch = 2
    np.testing.assert_allclose(chunked.codes.to_dense(), whole.codes.to_dense(), atol=1e-4)


def test_bad_captions_and_records_are_dead_letters_and_the_rest_is_kept(text_worker):
    items = _items(["", CAPTIONS[0], b"\xff\xfe", None, "   "])
    items[3] = WorkItem(meta=items[3].meta, payload=None, kind="text", ref="r3", error=("bad_record", "null"))
    part = text_worker.process(items)
    assert [m.id for m in part.items] == ["i1"] and len(part.codes) == 1
    assert {d.item_id: d.reason for d in part.dead_letters} == {
        "i0": "bad_text", "i2": "bad_text", "i3": "bad_record", "i4": "bad_text"}
    assert all(d.ref == f"r{d.item_id[1:]}" for d in part.dead_letters)


def test_image_path_payload_that_cannot_be_read_is_a_bad_path(text_worker, tmp_path):
    part = text_worker.process(_items([str(tmp_path / "missing.jpg")], kind="image"))
    assert [(d.reason, "missing.jpg" in d.detail) for d in part.dead_letters] == [("bad_path", True)]


def test_path_payloads_naming_devices_fifos_or_huge_files_are_dead_letters_not_hangs(text_worker, tmp_path):
    """The probe: /dev/zero was read without limit and a FIFO blocked the worker forever."""
    import os
    import time

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "huge.jpg").write_bytes(b"\xff" * (text_worker.max_payload_bytes + 1))
    t0 = time.monotonic()
    part = text_worker.process(_items(["/dev/zero", str(tmp_path / "pipe"), str(tmp_path / "huge.jpg")],
                                      kind="image"))
    assert time.monotonic() - t0 < 30
    assert [d.reason for d in part.dead_letters] == ["bad_path", "bad_path", "payload_too_large"]
    assert part.items == []


def test_path_payloads_outside_the_allowed_root_are_refused(text_worker, tmp_path):
    from tests.workers.helpers import jpeg_bytes

    (tmp_path / "inside").mkdir()
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes(1))
    (tmp_path / "inside" / "ok.jpg").write_bytes(jpeg_bytes(2))
    worker = Worker(text_worker.encoder, text_worker.decomposer, path_root=str(tmp_path / "inside"))
    try:
        part = worker._prepare(_items([str(tmp_path / "outside.jpg")], kind="image")[0])
        assert part.reason == "bad_path" and "outside the allowed root" in part.detail
        # inside the root the file is read (this caption worker then refuses images, which is not a path problem)
        inside = worker._prepare(_items([str(tmp_path / "inside" / "ok.jpg")], kind="image")[0])
        assert inside.reason == "other" and "no image preprocessing" in inside.detail
    finally:
        worker.close()


class _SlowReads(Worker):
    """A worker whose read of the payload "hang" never finishes in time (a stuck network file system)."""

    def _prepare(self, item):
        if item.payload == "hang":
            import time

            time.sleep(3)
        return super()._prepare(item)


def test_items_not_ready_by_the_batch_deadline_are_timeout_dead_letters(text_worker, tmp_path):
    import time

    worker = _SlowReads(text_worker.encoder, text_worker.decomposer, batch_timeout_s=0.5)
    try:
        items = _items([CAPTIONS[0], "hang", CAPTIONS[1]])
        items[1] = WorkItem(meta=items[1].meta, payload="hang", kind="image", ref="r1")  # read on the pool
        t0 = time.monotonic()
        part = worker.process(items)
        assert time.monotonic() - t0 < 2.5  # did not wait for the stuck read
    finally:
        worker.close()
    assert [(d.item_id, d.reason) for d in part.dead_letters] == [("i1", "timeout")]
    assert "0.5 s" in part.dead_letters[0].detail
    assert [m.id for m in part.items] == ["i0", "i2"]


def test_worker_config_rejects_bad_values_naming_them():
    with pytest.raises(ConfigError, match="l1 must be a finite number >= 0, got -1"):
        WorkerConfig(l1=-1)
    with pytest.raises(ConfigError, match="max_pixels must be >= 1"):
        WorkerConfig(max_pixels=0)
    with pytest.raises(ConfigError, match="max_payload_bytes must be >= 1"):
        WorkerConfig(max_payload_bytes=0)
    with pytest.raises(ConfigError, match="batch_timeout_s must be a finite number >= 0"):
        WorkerConfig(batch_timeout_s=float("nan"))


class _PoisonedSolver:
    """The real decomposer, made to raise whenever a batch contains one given embedding (a solver crash on one
    item), so the worker's isolation of the failing item can be observed."""

    def __init__(self, real, poison):
        self.real, self.poison = real, poison

    def decompose(self, emb, warn=True):
        import torch

        if any(torch.allclose(row, self.poison, atol=1e-3) for row in emb):
            raise RuntimeError("solver blew up")
        return self.real.decompose(emb, warn=warn)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_solver_crash_on_one_item_dead_letters_only_that_item(text_worker):
    poison = text_worker._encode([CAPTIONS[2]], text=True)[0]
    real = text_worker.decomposer
    text_worker.decomposer = _PoisonedSolver(real, poison)
    try:
        part = text_worker.process(_items(CAPTIONS))
    finally:
        text_worker.decomposer = real
    assert [m.id for m in part.items] == ["i0", "i1", "i3"] and len(part.codes) == 3
    assert [(d.item_id, d.reason) for d in part.dead_letters] == [("i2", "solver_failed")]
    clean = text_worker.process(_items([CAPTIONS[0], CAPTIONS[1], CAPTIONS[3]]))
    np.testing.assert_allclose(part.codes.to_dense(), clean.codes.to_dense(), atol=1e-4)


class _NaNOnCaption:
    """The real encoder, except that one caption comes out as NaN (a broken model row): the real decomposer must
    reject it and the worker must dead-letter it as bad_embedding."""

    def __init__(self, real, caption):
        self.real, self.caption = real, caption

    def encode_texts(self, texts):
        out = self.real.encode_texts(texts).clone()
        for i, t in enumerate(texts):
            if t == self.caption:
                out[i] = float("nan")
        return out

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_nan_embedding_is_rejected_by_the_decomposer_and_dead_lettered(text_worker):
    real = text_worker.encoder
    text_worker.encoder = _NaNOnCaption(real, CAPTIONS[1])
    try:
        part = text_worker.process(_items(CAPTIONS))
    finally:
        text_worker.encoder = real
    assert [m.id for m in part.items] == ["i0", "i2", "i3"] and len(part.codes) == 3
    assert [(d.item_id, d.reason) for d in part.dead_letters] == [("i1", "bad_embedding")]
    assert "NaN" in part.dead_letters[0].detail


def test_device_jpeg_decoding_matches_the_pil_path_and_leaves_bad_files_to_it(splice_cache_dir, tmp_path):
    """device_decode="on" runs the GPU code path (torchvision decode_jpeg + tensor resize/crop/normalise) on the CPU
    here: same items counted, same dead letters, embeddings as close as two bicubic resamplers allow."""
    from dataclasses import replace

    from tests.workers.helpers import jpeg_bytes

    vocab = tmp_path / "v.txt"
    vocab.write_text("snow\ncar\nkitchen\nbeach\ndog\ncat\n")
    config = WorkerConfig(model="ViT-S-32", pretrained="random", vocab=str(vocab), cache_dir=str(splice_cache_dir),
                          mean="vocab", device_decode="off")
    pil = Worker.create(config)
    dev = Worker.create(replace(config, device_decode="on"))
    assert pil._device_plan is None and dev._device_plan is not None
    good = jpeg_bytes(1, size=(320, 240))
    payloads = [good, jpeg_bytes(2, size=(200, 300)), jpeg_bytes(3, mode="L"), jpeg_bytes(4, mode="CMYK"),
                good[: len(good) // 2], jpeg_bytes(5, mode="RGBA", fmt="PNG"), b""]
    a, b = pil.process(_items(payloads, kind="image")), dev.process(_items(payloads, kind="image"))
    assert sorted(m.id for m in a.items) == sorted(m.id for m in b.items) == ["i0", "i1", "i2", "i3", "i5"]
    assert sorted((d.item_id, d.reason) for d in a.dead_letters) == sorted(
        (d.item_id, d.reason) for d in b.dead_letters) == [("i4", "truncated"), ("i6", "empty")]
    import torch

    from monitor.concepts.images import decode_image

    for k in (0, 1, 2):  # the JPEGs decoded on the device: compare embeddings with the PIL path
        x = pil.encoder.preprocess(decode_image(payloads[k]))
        ea = pil._encode([x], text=False)[0]
        items, _ = dev._device_prepare(_items([payloads[k]], kind="image"))
        eb = dev._encode([items[0][1]], text=False)[0]
        assert torch.nn.functional.cosine_similarity(ea, eb, dim=0) > 0.99
    pil.close()
    dev.close()
