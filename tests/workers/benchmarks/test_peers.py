"""The peer-detector part of `bench drift`: its JSON when no peers python is given, and, where an alibi-detect
environment exists (docs/benchmarks.md, "Peer detectors"), real runs of alibi-detect's online MMD and LSDD."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import textwrap

import numpy as np
import pytest

from monitor.errors import ConfigError
from workers.benchmarks import peers

VENV_PYTHON = "/work/alibi-venv/bin/python"


def _peer_python() -> str | None:
    path = os.environ.get(peers.ENV_VAR) or (VENV_PYTHON if os.access(VENV_PYTHON, os.X_OK) else None)
    return path


needs_alibi = pytest.mark.skipif(_peer_python() is None, reason=f"no alibi-detect environment: set "
                                 f"{peers.ENV_VAR} or create {VENV_PYTHON} (docs/benchmarks.md, Peer detectors)")


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    peers.add_arguments(parser)
    args = parser.parse_args([])
    for k, v in {"ert": 5000.0, **kw}.items():
        setattr(args, k, v)
    return args


def test_without_a_peers_python_the_part_says_it_did_not_run(monkeypatch):
    monkeypatch.delenv(peers.ENV_VAR, raising=False)
    out = peers.run(_args())
    assert out["run"] is False
    assert out["reason"] == f"not run: no --peers-python (or ${peers.ENV_VAR})"
    assert (out["window"], out["reference"], out["n_bootstraps"], out["ert_items"]) == (100, 1000, 6000, 5000.0)
    assert "alibi_mmd" not in out and peers.best_caption_delay(out) is None


def test_bench_drift_json_carries_the_peers_part_and_runs_without_them(monkeypatch, capsys):
    from monitor.cli.main import main

    monkeypatch.delenv(peers.ENV_VAR, raising=False)
    rc = main(["bench", "drift", "--json", "--concepts", "300", "--mean-l0", "8", "--window", "500",
               "--reference", "3000", "--ert", "1000", "--null-items", "2000", "--seeds", "1", "--horizon", "1000",
               "--planted", "2", "--no-mmd", "--throughput-images", "2000", "--no-captions"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["peers"]["run"] is False and out["peers"]["reason"].startswith("not run: no --peers-python")
    assert out["targets"]["caption_delay_ok"] is None  # no captions, so nothing to compare


def test_a_peers_python_that_is_not_executable_is_a_config_error(tmp_path):
    missing = tmp_path / "no-such-python"
    with pytest.raises(ConfigError, match="no-such-python"):
        peers.peers_python(_args(peers_python=str(missing)))


def test_the_best_caption_delay_is_the_smallest_among_the_peers_that_ran():
    out = {"run": True, "alibi_mmd": {"captions": {"delay_items_median": 49.0}},
           "alibi_lsdd": {"captions": {"delay_items_median": 88.0}}}
    assert peers.best_caption_delay(out) == 49.0


@needs_alibi
@pytest.mark.parametrize("detector", ["mmd", "lsdd"])
def test_alibi_online_detector_finds_a_planted_shift_within_a_few_windows(detector):
    rng = np.random.default_rng(7)
    d = 8
    reference = rng.standard_normal((300, d))
    onset = 150
    shifted = rng.standard_normal((400, d))
    shifted[onset:] += 1.0  # a one-standard-deviation move of every coordinate
    out = peers.run_detector(_peer_python(), detector, reference, [(shifted, onset)], ert=200, window=10,
                             n_bootstraps=400, timeout=120)
    (stream,) = out["streams"]
    delay = peers.delay_of(stream)
    assert delay is not None and 0 < delay <= 50, stream
    assert out["detector"] == detector and out["alibi_detect"].startswith("0.13")
    assert stream["items"] == onset + delay  # the runner stops at the first alarm after onset


@needs_alibi
def test_batched_threshold_configuration_equals_alibis_own():
    """alibi_peer.py replaces two slow loops of alibi-detect's threshold configuration; on a small problem both
    give the same thresholds from the same random draws (float32 sums in another order: 1e-4 relative)."""
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, torch
        sys.path.insert(0, {str(peers.RUNNER.parent)!r})
        import alibi_peer
        from alibi_detect.cd.pytorch.mmd_online import MMDDriftOnlineTorch
        original = MMDDriftOnlineTorch._configure_thresholds
        ref = np.random.default_rng(0).standard_normal((120, 6)).astype(np.float32)
        out = {{}}
        for det in ("mmd", "lsdd"):
            for batched in (False, True):
                MMDDriftOnlineTorch._configure_thresholds = original
                torch.manual_seed(3)
                d = alibi_peer._detector(det, ref, ert=20, window=5, n_bootstraps=200, batched=batched)
                out[det + str(batched)] = [float(t) for t in d._detector.thresholds]
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([_peer_python(), "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for det in ("mmd", "lsdd"):
        assert len(out[det + "True"]) == 5
        np.testing.assert_allclose(out[det + "True"], out[det + "False"], rtol=1e-4)


def test_summary_counts_delay_from_onset_and_run_length_over_the_null_items():
    result = {"configure_s": 1.0, "wall_s": 3.0, "streams": [
        {"onset": 100, "items": 130, "alarms": [40, 130], "predict_s": 0.13},  # one false alarm, then detection
        {"onset": 100, "items": 600, "alarms": [], "predict_s": 0.6},  # never detected: censored at the horizon
        {"onset": None, "items": 1000, "alarms": [300, 700], "predict_s": 1.0},
    ]}
    out = peers._summary([result], _args(horizon=500))
    assert out["delays"] == [30, None] and out["delay_items_median"] == (30 + 500) / 2
    assert out["pre_onset_false_alarms"] == 1
    assert (out["null_items"], out["null_false_alarms"], out["run_length_items"]) == (1000, 2, 500.0)
    assert out["ratio_to_ert"] == 500.0 / 5000.0 and out["censored"] is False
    assert out["us_per_item"] == round(1e6 * 1.73 / 1730, 1)
