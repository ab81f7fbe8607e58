"""``bench gpu`` (workers/benchmarks/gpu.py): the quick CPU mode reports every documented part with a certified solver
gap, and the script runs where only torch and the standard scientific stack exist (no Ray, no Prometheus client, no
open_clip): the parts that need a missing package say so and the others still run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TOP_KEYS = {"date", "device", "gpu", "cpu_model", "cpu_count", "python", "torch_version", "cuda_version", "quick",
            "wall_s"}
SOLVER_KEYS = {"n_concepts", "dim", "l1", "tol", "screen_dtype", "batches", "best_img_per_s", "certified", "wall_s"}
SOLVER_ROW_KEYS = {"batch", "img_per_s", "ms_per_batch", "certificate_gap_max", "certificate_gap_f64_max",
                   "kkt_f64_max", "converged_fraction", "mean_l0", "iterations"}
JPEG_ROW_KEYS = {"image_size", "images", "mean_jpeg_bytes", "pil_threads_img_per_s",
                 "torchvision_cpu_1_thread_img_per_s", "device_img_per_s"}
WORKER_RUN_KEYS = {"mode", "batch", "items", "items_per_s", "decomposed", "dead_letters", "nonconverged", "time_split_s",
                    "device_decode_active"}

# What the GPU machine lacks: the path finder (through which every installed package is found) is made blind to
# these names, so ``import`` fails and ``importlib.util.find_spec`` answers None, as where they are not installed.
BLOCKER = """
import importlib.machinery, runpy, sys
BLOCKED = {blocked!r}
class _Blind(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [_Blind if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.argv = ["gpu"] + {argv!r}
try:
    runpy.run_module("workers.benchmarks.gpu", run_name="__main__")
finally:
    leaked = sorted(m for m in BLOCKED if m in sys.modules)
    print("LEAKED", leaked, file=sys.stderr)
"""


def _run(tmp_path, argv, blocked=()):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = BLOCKER.format(blocked=set(blocked), argv=[*argv, "--out", str(out)])
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LEAKED []" in proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1]) if "--json" in argv else None
    return json.loads(out.read_text()), printed, proc.stderr


def test_quick_cpu_run_reports_every_part_and_a_certified_solver(tmp_path):
    pytest.importorskip("open_clip")
    result, printed, log = _run(tmp_path, ["--json", "--device", "cpu", "--quick"])
    assert printed == result
    assert TOP_KEYS <= set(result) and result["device"] == "cpu" and result["quick"] is True
    solver = result["solver"]
    assert SOLVER_KEYS <= set(solver)
    for row in solver["batches"]:
        assert SOLVER_ROW_KEYS <= set(row)
        # certified: the solver's own gap and an independent float64 certificate are both within tolerance
        assert row["converged_fraction"] == 1.0
        assert 0 <= row["certificate_gap_f64_max"] <= solver["tol"]
        assert row["certificate_gap_max"] <= solver["tol"]
        assert row["img_per_s"] > 0 and row["mean_l0"] > 0
    assert solver["certified"] is True
    enc = result["encoder"]
    assert "error" not in enc and "skipped" not in enc
    assert enc["dtype"] == "fp32" and enc["best_img_per_s"] > 0
    for row in result["jpeg"]["sizes"]:
        assert JPEG_ROW_KEYS <= set(row) and row["device_img_per_s"] is None
        assert row["pil_threads_img_per_s"] > 0
    worker = result["worker"]
    assert "error" not in worker, worker.get("traceback")
    assert [r["mode"] for r in worker["runs"]] == ["pil_decode"]  # no device decoding without CUDA
    for run in worker["runs"]:
        assert WORKER_RUN_KEYS <= set(run)
        assert run["decomposed"] == run["items"] and run["dead_letters"] == 0
    assert worker["best_items_per_s"] > 0
    assert "solver: batch" in log  # progress goes to stderr as it happens


def test_runs_without_ray_prometheus_or_open_clip(tmp_path):
    blocked = ("ray", "prometheus_client", "open_clip", "ftfy", "wcwidth", "wordfreq", "redis", "sklearn")
    result, _, _ = _run(tmp_path, ["--device", "cpu", "--quick", "--parts", "solver,encoder,jpeg"], blocked)
    assert result["solver"]["certified"] is True
    assert "open_clip" in result["encoder"]["skipped"]
    assert result["jpeg"]["sizes"][0]["pil_threads_img_per_s"] > 0


def test_unknown_part_is_rejected(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "workers.benchmarks.gpu", "--parts", "solver,warp"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "warp" in proc.stderr
