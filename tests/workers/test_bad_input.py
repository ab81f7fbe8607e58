"""Bad input never stops the stream: each bad-input class is dead-lettered with its reason and counted, odd but valid
images (CMYK, alpha, 16-bit, palette, grayscale) are decoded and counted, and a dictionary/encoder mismatch is a
clear start-up error.

NaN/inf/zero embeddings cannot be produced by a real encoder from an image that decodes (NaN pixels are refused at
decoding as unsupported_image); the decomposer rejects such rows and the worker maps its rejections to
``bad_embedding``, pinned in tests/monitor/test_worker.py with an encoder that emits NaN for one caption.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from monitor.cli.main import main as cli_main
from monitor.drift.monitor import MonitorConfig, ReferenceConfig, WindowConfig
from monitor.errors import ConfigError
from monitor.records import ItemMeta
from workers.core import Worker
from workers.items import WorkItem
from tests.workers.helpers import jpeg_bytes
from workers.deadletter import read_parquet_dead_letters
from workers.config import PipelineConfig
from workers.driver import run_pipeline


def _png(arr: np.ndarray, mode: str, **info) -> bytes:
    img = Image.fromarray(arr, mode=mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG", **info)
    return buf.getvalue()


def _png16(arr: np.ndarray) -> bytes:
    img = Image.fromarray(arr)  # uint16 -> mode "I;16"
    assert img.mode.startswith("I;16")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _payloads() -> dict[str, tuple[bytes | None, str | None]]:
    """name -> (payload, expected dead-letter reason or None when it must be counted)."""
    good = jpeg_bytes(1, size=(64, 48))
    rng = np.random.default_rng(0)
    palette = Image.fromarray(rng.integers(0, 4, (20, 20), dtype=np.uint8), mode="L").convert("P")
    pbuf = io.BytesIO()
    palette.save(pbuf, format="PNG", transparency=0)
    return {
        "good-1": (good, None),
        "good-2": (jpeg_bytes(2), None),
        "cmyk": (jpeg_bytes(3, mode="CMYK"), None),
        "rgba": (jpeg_bytes(4, mode="RGBA", fmt="PNG"), None),
        "gray16": (_png16((rng.random((30, 30)) * 65535).astype(np.uint16)), None),
        "palette-alpha": (pbuf.getvalue(), None),
        "gray": (jpeg_bytes(5, mode="L"), None),
        "zero-byte": (b"", "empty"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "not-an-image": (b"%PDF-1.4 definitely not a picture", "not_an_image"),
        "bomb": (_png(np.zeros((2100, 2100), dtype=np.uint8), "L"), "decompression_bomb"),  # > 4 M pixels
        "null": (None, "bad_record"),
    }


def test_worker_core_dead_letters_each_bad_class_and_decodes_odd_valid_images(image_config):
    worker = Worker.create(image_config)
    payloads = _payloads()
    items = [WorkItem(meta=ItemMeta(id=k, timestamp=1.0), payload=v, kind="image", ref=f"ref:{k}",
                      error=("bad_record", "payload is null") if v is None else None)
             for k, (v, _) in payloads.items()]
    part = worker.process(items)
    counted = {m.id for m in part.items}
    dead = {d.item_id: d.reason for d in part.dead_letters}
    assert counted == {k for k, (_, r) in payloads.items() if r is None}
    assert dead == {k: r for k, (_, r) in payloads.items() if r is not None}
    assert len(part.codes) == len(counted)
    assert all(d.ref == f"ref:{d.item_id}" and d.detail for d in part.dead_letters)
    worker.close()


def test_pipeline_counts_the_good_and_dead_letters_the_bad_with_reasons(ray_local, image_config, tmp_path):
    payloads = _payloads()
    names = list(payloads) * 3  # every class several times, spread over batches and both workers
    path = tmp_path / "frames.parquet"
    pq.write_table(pa.table({
        "name": [f"{n}#{i}" for i, n in enumerate(names)],
        "image": pa.array([payloads[n][0] for n in names], pa.binary()),
        "ts": [1_700_000_000.0 + i for i in range(len(names))],
    }), path)
    config = PipelineConfig(
        source=f"parquet://{path}?image_column=image&timestamp_column=ts&id_column=name",
        worker=image_config, workers=2, batch_size=7,
        monitor=MonitorConfig(window=WindowConfig(kind="count", size=10), reference=ReferenceConfig(n_images=10)),
        dead_letter=f"parquet://{tmp_path / 'dead'}", metrics_port=0)
    summary = run_pipeline(config)
    expected_dead = {}
    for n in names:
        reason = payloads[n][1]
        if reason is not None:
            expected_dead[reason] = expected_dead.get(reason, 0) + 1
    n_good = sum(payloads[n][1] is None for n in names)
    assert summary.images == n_good
    assert summary.dead_letters == expected_dead
    table = read_parquet_dead_letters(tmp_path / "dead")
    stored = dict(zip(table.column("item_id").to_pylist(), table.column("reason").to_pylist()))
    assert stored == {f"{n}#{i}": payloads[n][1] for i, n in enumerate(names) if payloads[n][1] is not None}
    assert all(ref.startswith(str(path)) for ref in table.column("ref").to_pylist())


def test_dictionary_encoder_dimension_mismatch_is_a_startup_error(image_config, tmp_path):
    from dataclasses import replace

    from monitor.concepts.dictionary import save_mean

    bad = tmp_path / "mean.npy"
    save_mean(bad, np.ones(7, dtype=np.float32), encoder_id="open_clip:ViT-S-32:random-seed0", n=10,
              modality="image")
    with pytest.raises(ConfigError, match="7"):
        Worker.create(replace(image_config, mean=str(bad)))


def test_run_command_reports_a_startup_config_error_and_exits_2(ray_local, image_config, tmp_path, capsys):
    bad = tmp_path / "mean.npy"
    np.save(bad, np.ones(7, dtype=np.float32))
    rc = cli_main(["run", "--source", str(tmp_path), "--model", "ViT-S-32", "--pretrained", "random",
                   "--vocab", image_config.vocab, "--cache-dir", image_config.cache_dir, "--mean", str(bad),
                   "--workers", "1", "--metrics-port", "-1"])
    assert rc == 2
    assert "7" in capsys.readouterr().err
