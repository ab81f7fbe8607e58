"""The worker core with the null encoder: payloads are embedded without decoding, empty and malformed items are
still dead-lettered and counted, and the solver can be switched off for control-plane measurements."""

from __future__ import annotations

import pytest

from monitor.records import ItemMeta
from workers.core import Worker, WorkerConfig
from workers.items import WorkItem


def _items(n):
    return [WorkItem(meta=ItemMeta(id=f"i{i}", timestamp=1.0 + i), payload=bytes([i % 256, i // 256]) * 40)
            for i in range(n)]


@pytest.mark.parametrize("solver", ["lasso", "off"])
def test_null_worker_counts_every_item(tmp_path, solver):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(f"concept {i}" for i in range(400)) + "\n")
    worker = Worker.create(WorkerConfig(model="null:32", vocab=str(vocab), solver=solver, device="cpu",
                                        cache_dir=str(tmp_path)))
    try:
        items = _items(70) + [
            WorkItem(meta=ItemMeta(id="empty", timestamp=2.0), payload=b""),
            WorkItem(meta=ItemMeta(id="broken", timestamp=2.0), payload=b"x", error=("bad_record", "no ts")),
            WorkItem(meta=ItemMeta(id="caption", timestamp=2.0), payload="a dog on snow", kind="text"),
        ]
        part = worker.process(items)
    finally:
        worker.close()
    assert {d.item_id: d.reason for d in part.dead_letters} == {"empty": "empty", "broken": "bad_record"}
    assert [m.id for m in part.items] == [f"i{i}" for i in range(70)] + ["caption"]
    assert len(part.codes) == 71 and part.codes.n_concepts == 400
    assert (part.codes.l0 > 0).all()
    if solver == "lasso":
        assert part.codes.converged.all()
    else:
        assert part.codes.converged is None


def test_a_batch_as_columns_gives_the_same_partial_as_the_same_items_as_objects(tmp_path):
    """Sources hand workers columns (ItemBatch), tests and benchmarks lists of WorkItem: the rows prepared straight
    from the payload column must give the same codes, items and dead letters (reasons, ids, streams, references)."""
    import numpy as np

    from workers.items import ItemBatch

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(f"concept {i}" for i in range(50)) + "\n")
    worker = Worker.create(WorkerConfig(model="null:16", vocab=str(vocab), solver="off", device="cpu",
                                        cache_dir=str(tmp_path)))
    items = [WorkItem(meta=ItemMeta(id=f"i{i}", timestamp=1.0 + i, stream=f"cam{i % 3}"), payload=bytes([i]) * 9,
                      ref=f"r{i}") for i in range(20)]
    items[4] = WorkItem(meta=ItemMeta(id="e", timestamp=9.5, stream="cam1"), payload=b"", ref="r-e")
    items[7] = WorkItem(meta=ItemMeta(id="n", timestamp=9.0, stream="cam2"), payload=None, ref="r-n")
    try:
        for errors in (False, True):
            if errors:
                items[11] = WorkItem(meta=items[11].meta, payload=b"x", ref="r11", error=("bad_record", "no ts"))
            a = worker.process(list(items))
            b = worker.process(ItemBatch.from_items(items))
            assert a.items == b.items and a.dead_letters == b.dead_letters
            assert np.array_equal(a.codes.indices, b.codes.indices) and np.array_equal(a.codes.values, b.codes.values)
            assert [(d.item_id, d.stream, d.timestamp, d.reason, d.ref) for d in a.dead_letters] == [
                ("e", "cam1", 9.5, "empty", "r-e"), ("n", "cam2", 9.0, "empty", "r-n")] + (
                [("i11", "cam2", 12.0, "bad_record", "r11")] if errors else [])
            assert [m.id for m in a.items] == [f"i{i}" for i in range(20) if i not in (4, 7) and not
                                               (errors and i == 11)]
    finally:
        worker.close()


def test_batched_device_preprocessing_equals_one_image_at_a_time():
    """Images decoded on the device are resized and normalised in groups of equal size; each result must equal
    preprocessing that image alone, and come back in input order whatever the mix of sizes."""
    import torch
    from torchvision.transforms import InterpolationMode

    from workers.core import _tensor_preprocess, _tensor_preprocess_batch

    plan = {"size": 32, "interpolation": InterpolationMode.BICUBIC, "crop": [32, 32],
            "mean": [0.48, 0.45, 0.40], "std": [0.27, 0.26, 0.28]}
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 40, 50), (3, 64, 48), (3, 40, 50), (3, 33, 90), (3, 64, 48), (3, 40, 50)]
    images = [torch.randint(0, 256, s, generator=g, dtype=torch.uint8) for s in shapes]
    batched = _tensor_preprocess_batch(images, plan)
    assert len(batched) == len(images)
    for img, got in zip(images, batched):
        assert got.shape == (3, 32, 32)
        torch.testing.assert_close(got, _tensor_preprocess(img, plan), rtol=0, atol=1e-5)
