"""``splice-monitor bench solver``: runs on user .npy files, reports every documented key, and rejects bad files."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from workers.benchmarks import solver as bench
from monitor.errors import ConfigError
from monitor.synthetic.problems import make_problem

DOCUMENTED_KEYS = {
    "date_utc", "device", "gpu", "cpu_model", "torch_threads", "torch_version", "load_avg_1m", "problem",
    "n_concepts", "dim", "batch", "l1", "tol", "screen_dtype", "solver_img_per_s", "solver_ms_per_batch", "solver_cpu_ms_per_batch",
    "matmul_img_per_s", "solver_vs_matmul", "certificate_gap_max", "certificate_gap_mean", "kkt_max",
    "converged_fraction", "iterations", "inner_iterations", "mean_l0", "mean_cosine", "reference_samples",
    "reference_img_per_s", "reference_tol", "reference_certificate_gap_max", "rel_objective_gap_max",
    "rel_objective_gap_mean", "speedup_vs_reference", "encoder_model", "encoder_img_per_s", "solver_vs_encoder",
}


def _args(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture()
def npy_problem(tmp_path):
    p = make_problem(n=12, n_concepts=600, dim=48)
    d_path, z_path = tmp_path / "D.npy", tmp_path / "Z.npy"
    np.save(d_path, p.dictionary.numpy())
    np.save(z_path, p.targets.numpy())
    return d_path, z_path


def test_bench_on_user_files_reports_documented_keys_and_matches_reference(npy_problem):
    d_path, z_path = npy_problem
    prev = torch.get_num_threads()
    try:
        out = bench.run(_args("--dictionary", str(d_path), "--embeddings", str(z_path), "--batch", "8",
                              "--repeats", "1", "--reference-samples", "3", "--skip-encoder", "--threads", "1"))
    finally:
        torch.set_num_threads(prev)
    assert set(out) == DOCUMENTED_KEYS
    assert out["batch"] == 8 and out["n_concepts"] == 600 and out["dim"] == 48
    assert out["problem"].startswith("files:")
    assert out["converged_fraction"] == 1.0 and out["certificate_gap_max"] <= 1e-4
    assert abs(out["rel_objective_gap_max"]) < 1e-4 and out["reference_samples"] == 3
    assert out["solver_img_per_s"] > 0 and out["matmul_img_per_s"] > 0
    json.dumps(out)  # plain JSON types only


def test_cli_prints_one_json_object(npy_problem, capsys):
    from monitor.cli.main import main

    d_path, z_path = npy_problem
    prev = torch.get_num_threads()
    try:
        rc = main(["bench", "solver", "--json", "--dictionary", str(d_path), "--embeddings", str(z_path),
                   "--repeats", "1", "--reference-samples", "0", "--skip-encoder", "--threads", "1"])
    finally:
        torch.set_num_threads(prev)
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference_img_per_s"] is None and out["batch"] == 12


def test_dimension_mismatch_names_both_shapes(tmp_path):
    np.save(tmp_path / "D.npy", np.ones((10, 8), np.float32))
    np.save(tmp_path / "Z.npy", np.ones((3, 6), np.float32))
    with pytest.raises(ConfigError, match=r"\(10, 8\).*\(3, 6\)"):
        bench.run(_args("--dictionary", str(tmp_path / "D.npy"), "--embeddings", str(tmp_path / "Z.npy")))


def test_pickled_or_missing_files_are_refused(tmp_path):
    np.save(tmp_path / "D.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "Z.npy", np.ones((3, 6), np.float32))
    with pytest.raises(ConfigError, match=r"--dictionary .*not a plain \.npy array"):
        bench.run(_args("--dictionary", str(tmp_path / "D.npy"), "--embeddings", str(tmp_path / "Z.npy")))
    with pytest.raises(ConfigError, match=r"--embeddings .*no such file"):
        bench.run(_args("--dictionary", str(tmp_path / "D.npy"), "--embeddings", str(tmp_path / "nope.npy")))
    with pytest.raises(ConfigError, match=r"go together"):
        bench.run(_args("--dictionary", str(tmp_path / "D.npy")))
