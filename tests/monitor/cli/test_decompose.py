"""The decompose and calibrate commands: reference-style text output, JSON Lines, per-item failures that do not
stop the run, exit codes, and a calibrated mean that decompose then uses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from monitor.cli.main import main


@pytest.fixture
def cache_args(splice_cache_dir):
    return ["--cache-dir", str(splice_cache_dir)]


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "frames"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(d / "a.png")
    Image.new("RGBA", (30, 30), (255, 0, 0, 128)).save(d / "sub" / "b.png")
    (d / "c.jpg").write_bytes(b"")
    good = (d / "a.png").read_bytes()
    (d / "d.png").write_bytes(good[: len(good) // 2])
    (d / "notes.md").write_text("not an image suffix: ignored")
    return d


@pytest.fixture
def small_vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("# test vocabulary\ncat\ndog\nsofa\nsnow\ncar\nbeach\ntree\nred\nstreet\nsky\n", encoding="utf-8")
    return path


def test_text_output_has_concepts_l0_and_cosine_lines(capsys, cache_args):
    rc = main(["decompose", "a cat sleeping on a sofa", "a policeman riding a motorcycle", "--top", "4", *cache_args])
    out = capsys.readouterr().out
    assert rc == 0
    blocks = [b for b in out.strip().split("\n\n") if b]
    assert len(blocks) == 2
    first = blocks[0].splitlines()
    assert first[0] == 'Concept decomposition of "a cat sleeping on a sofa":'
    concepts = [line.split()[0] for line in first[1:5]]
    assert {"cat", "sofa"} <= set(concepts)
    assert all(re.fullmatch(r"    \S+ +\d\.\d{4}", line) for line in first[1:5])
    l0 = int(re.search(r"^L0 norm: (\d+)$", blocks[0], re.M).group(1))
    cos = float(re.search(r"^cosine sim: (\d\.\d{4})$", blocks[0], re.M).group(1))
    assert 4 <= l0 <= 60 and 0.5 < cos <= 1.0
    if l0 > 4:
        assert f"... {l0 - 4} more" in blocks[0]
    assert "motorcycle" in blocks[1]


def test_json_lines_report_successes_and_failures_and_strict_exit(capsys, cache_args):
    rc = main(["decompose", "--json", "--strict", "a dog running on the beach", "missing.jpg", "--top", "0",
               *cache_args])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert rc == 1  # --strict: one input failed
    ok = [r for r in records if r["ok"]]
    bad = [r for r in records if not r["ok"]]
    assert len(ok) == 1 and len(bad) == 1
    rec = ok[0]
    assert rec["kind"] == "text" and rec["input"] == "a dog running on the beach"
    assert len(rec["concepts"]) == rec["l0"]  # --top 0 lists all
    assert {"dog", "beach"} <= {c["concept"] for c in rec["concepts"][:5]}
    assert 0.5 < rec["cosine"] <= 1 and rec["converged"] is True and rec["concept_space"].startswith("cs-")
    assert bad[0]["input"] == "missing.jpg" and "does not exist" in bad[0]["detail"]
    assert "decomposed 1 of 2 inputs (1 failed)" in captured.err


def test_image_directory_reports_bad_files_and_goes_on(capsys, image_dir, small_vocab_file, tmp_path):
    args = ["decompose", str(image_dir), "--model", "ViT-S-32", "--pretrained", "random", "--vocab",
            str(small_vocab_file), "--target-l0", "2", "--json", "--cache-dir", str(tmp_path / "cache")]
    rc = main(args)
    captured = capsys.readouterr()
    records = {json.loads(line)["input"]: json.loads(line) for line in captured.out.splitlines()}
    assert rc == 0  # at least one image decomposed
    names = {os.path.basename(k): v for k, v in records.items()}
    assert set(names) == {"a.png", "b.png", "c.jpg", "d.png"}
    assert names["a.png"]["ok"] and names["b.png"]["ok"] and names["a.png"]["kind"] == "image"
    assert names["a.png"]["l0"] == 2
    assert names["c.jpg"]["reason"] == "empty" and names["d.png"]["reason"] == "truncated"
    assert "c.jpg: empty" in captured.err and "zero mean" in captured.err  # the once-only uncalibrated warning


def test_text_only_model_refuses_images(capsys, image_dir, cache_args):
    rc = main(["decompose", str(image_dir / "a.png"), *cache_args])
    assert rc == 2
    assert "encodes texts only" in capsys.readouterr().err


def test_calibrate_captions_then_decompose_with_the_mean(capsys, tmp_path, cache_args):
    captions = tmp_path / "captions.txt"
    captions.write_text("a cat on a sofa\n\na red car in the street\nsnow on the trees\nkids on a beach\n",
                        encoding="utf-8")
    out = tmp_path / "mean.npy"
    assert main(["calibrate", str(captions), "-o", str(out)]) == 0
    side = json.loads((tmp_path / "mean.npy.json").read_text())
    assert side["modality"] == "text" and side["n"] == 4 and side["encoder_id"].startswith("st:all-MiniLM-L6-v2:")
    mean = np.load(out, allow_pickle=False)
    assert mean.shape == (384,) and 0 < np.linalg.norm(mean) < 1
    capsys.readouterr()
    rc = main(["decompose", "--json", "--mean", str(out), str(captions), *cache_args])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert rc == 0 and len(records) == 4 and all(r["ok"] for r in records)
    assert records[0]["input"].endswith("captions.txt:1")
    assert "no calibrated modality mean" not in captured.err


def test_calibrate_refuses_mixed_modalities(capsys, image_dir, tmp_path):
    rc = main(["calibrate", str(image_dir / "a.png"), "a caption", "-o", str(tmp_path / "m.npy")])
    assert rc == 2 and "mix 1 images and 1 captions" in capsys.readouterr().err


def test_calibrate_images_with_open_clip(capsys, image_dir, tmp_path):
    out = tmp_path / "img_mean.npy"
    assert main(["calibrate", str(image_dir), "--model", "ViT-S-32", "--pretrained", "random", "-o", str(out)]) == 0
    side = json.loads((tmp_path / "img_mean.npy.json").read_text())
    assert side["encoder_id"] == "open_clip:ViT-S-32:random-seed0" and side["n"] == 2 and side["dim"] == 384
    captured = capsys.readouterr()
    assert "2 skipped" in captured.out and "c.jpg: empty" in captured.err


def test_console_script_runs(splice_cache_dir):
    exe = os.path.join(os.path.dirname(sys.executable), "splice-monitor")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "monitor"]
    proc = subprocess.run(
        [*cmd, "decompose", "--json", "--top", "3", "--cache-dir", str(splice_cache_dir), "a red car on a street"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert "car" in [c["concept"] for c in rec["concepts"]]
    assert proc.stderr.count("no calibrated modality mean") == 1


def test_decompose_with_the_laion_vocabulary_names_the_objects(capsys, cache_args):
    captions = {
        "a skier on a snowy mountain": {"skier", "snowy", "snow", "ski", "mountain"},
        "a surfer by the ocean": {"surfer", "ocean", "surf", "waves"},
        "a chef next to the stove": {"chef", "stove", "kitchen"},
        "a yellow taxi at a city intersection": {"taxi", "intersection", "cab"},
    }
    rc = main(["decompose", "--vocab", "laion", "--json", "--top", "3", *captions, *cache_args])
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in records] == list(captions)
    for record, expected in zip(records, captions.values()):
        top = [c["concept"] for c in record["concepts"]]
        assert len(set(top[:2]) & expected) == 2, (record["input"], top)  # both leading concepts name the scene


def test_quiet_keeps_stderr_free_of_notices(capsys, cache_args):
    rc = main(["decompose", "--quiet", "--vocab", "laion", "a dog", "a cat", *cache_args])
    assert rc == 0
    err = capsys.readouterr().err
    assert "decomposed 2 of 2" not in err


def test_calibrate_compares_an_image_mean_with_the_published_one(capsys):
    import argparse

    from monitor.cli.calibrate import _compare_with_published
    from monitor.concepts.published import load_published_mean, published_mean

    published = load_published_mean(published_mean("ViT-B-32", "openai"))
    _compare_with_published(argparse.Namespace(model="ViT-B-32", pretrained="openai"), published * 2)
    out = capsys.readouterr().out
    assert "means_clip_ViT-B-32_image.npy" in out and "cosine 1.0000 with yours" in out
    _compare_with_published(argparse.Namespace(model="ViT-B-32", pretrained="random"), published)
    assert capsys.readouterr().out == ""  # no published mean for random weights: nothing to compare
