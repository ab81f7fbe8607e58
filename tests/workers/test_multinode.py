"""A real two-node Ray cluster on this machine: `ray start --head` plus a second `ray start --address=...` (two
raylets on loopback), `splice-monitor run --ray-address` against it as a user runs it, and the second node killed
(SIGKILL of its raylet and everything it started) mid-stream. With a surviving worker the driver resubmits the dead
worker's batches there and every item is counted once; with none left the run ends with a clear error, loses
nothing it acknowledged, and the rerun on a fresh node completes the job with exact counts.

The clusters are torn down by killing exactly the processes these tests started (never `ray stop`, which would stop
every Ray on the machine, the other test sessions' included)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitor.history.store import HistoryStore
from tests.workers.helpers import free_port

pytestmark = pytest.mark.slow

N_ITEMS = 3000
CAMERAS = ["camera-1", "camera-2", "camera-3"]


class LocalCluster:
    """Ray nodes started with `ray start` in process groups of their own, so the test can kill one node (its
    raylet, the processes it started, the workers it spawned) and tear everything down without touching other
    Rays."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # a short path: Ray's unix sockets live under it
        self.temp_dir = tempfile.mkdtemp(prefix="rs", dir="/tmp")
        self.groups: dict[str, int] = {}  # node name -> process group of its `ray start`
        self.killed_nodes: set[str] = set()

    def _start(self, name: str, args: list[str]) -> None:
        proc = subprocess.Popen([shutil.which("ray"), "start", *args, "--disable-usage-stats"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.groups[name] = proc.pid
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"ray start ({name}) failed:\n{out[-3000:]}"

    def start_head(self, num_cpus: int) -> None:
        self._start("head", ["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                             f"--num-cpus={num_cpus}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"])

    def add_node(self, name: str, num_cpus: int) -> None:
        self._start(name, [f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
                           "--dashboard-agent-listen-port=0", "--min-worker-port=0", "--max-worker-port=0"])
        self.wait_for_nodes(len(set(self.groups) - self.killed_nodes))

    def processes(self, name: str) -> list[psutil.Process]:
        """Every process node ``name`` started: its `ray start` group and the descendants of those (Ray's worker
        processes lead groups of their own)."""
        group = self.groups[name]
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == group:
                    found[p.pid] = p
                    for child in p.children(recursive=True):
                        found[child.pid] = child
            except (ProcessLookupError, psutil.Error):
                continue
        return list(found.values())

    def kill_node(self, name: str) -> list[str]:
        victims = self.processes(name)
        lines = []
        for p in victims:
            try:
                lines.append(" ".join(p.cmdline()))
                p.kill()
            except psutil.Error:
                continue
        self.killed_nodes.add(name)
        return lines

    def wait_for_nodes(self, n: int, timeout_s: float = 90.0) -> None:
        code = (f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
                f"print(sum(1 for x in ray.nodes() if x['Alive']))")
        deadline = time.monotonic() + timeout_s
        alive = None
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            alive = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else None
            if alive == str(n):
                return
            time.sleep(1.0)
        raise AssertionError(f"the cluster did not reach {n} live nodes (last count {alive!r})")

    def stop(self) -> None:
        for name in list(self.groups):
            self.kill_node(name)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def cluster():
    if shutil.which("ray") is None:
        pytest.skip("the `ray` command is not on PATH (it comes with the ray package)")
    c = LocalCluster()
    try:
        yield c
    finally:
        c.stop()


def _source(tmp_path) -> str:
    n = N_ITEMS
    path = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"ts": [1_767_225_600.0 + i for i in range(n)], "id": [f"i{i:05d}" for i in range(n)],
                             "caption": [f"a street scene number {i}" for i in range(n)],
                             "camera": [CAMERAS[i % len(CAMERAS)] for i in range(n)]}), path)
    return f"parquet://{path}?text_column=caption&timestamp_column=ts&id_column=id&stream_column=camera"


def _run_args(cluster, tmp_path, *extra: str) -> list[str]:
    vocab = tmp_path / "vocab.txt"
    if not vocab.exists():
        vocab.write_text("\n".join(f"concept {i}" for i in range(60)) + "\n")
    return [sys.executable, "-m", "monitor", "run", "--ray-address", cluster.address, "--source", _source(tmp_path),
            "--model", "null:32", "--vocab", str(vocab), "--mean", "vocab", "--cache-dir", str(tmp_path / "cache"),
            "--batch-size", "20", "--window", "500", "--metrics-port", "-1", "--status-every", "0.5", "--json",
            *extra]


def _kill_when_running(cluster, proc, node: str, ready=lambda: True) -> list[str]:
    """Wait for a status line of the run with items done (and ``ready()``), then kill ``node``; returns the command
    lines of what was killed."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"the run ended before the kill (exit {proc.wait()})")
        if line.startswith("run:") and " items" in line and not line.startswith("run: 0 items") and ready():
            return cluster.kill_node(node)
    raise AssertionError("no progress within 150 s")


def _checkpointed(store):
    def ready() -> bool:
        try:
            cp = HistoryStore.open(store).get_checkpoint("job")
        except Exception:  # the store is not created yet
            return False
        return bool(cp) and int(cp.get("images", 0)) > 0
    return ready


def _finish(proc, timeout_s: float = 150) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run did not end within {timeout_s} s:\n{err[-3000:]}")
    return out, err


def test_a_node_killed_mid_stream_has_its_batches_redone_on_the_surviving_worker(cluster, tmp_path):
    cluster.start_head(num_cpus=1)  # one worker's CPU here (and the aggregator, which takes none)
    cluster.add_node("node2", num_cpus=1)  # the other worker can only land on the second node
    proc = subprocess.Popen(_run_args(cluster, tmp_path, "--workers", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        killed = _kill_when_running(cluster, proc, "node2")
        assert any("raylet" in k for k in killed) and any("WorkerHost" in k for k in killed), killed
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["images"] == N_ITEMS, summary
    assert summary["duplicates"] == 0 and sum(summary["dead_letters"].values()) == 0
    assert summary["streams"] == {c: N_ITEMS // len(CAMERAS) for c in CAMERAS}
    assert summary["worker_failures"] >= 1 and summary["retries"] >= 1, "the kill should have cost a batch"


def test_with_no_worker_left_the_run_fails_clearly_and_the_rerun_completes_the_job(cluster, tmp_path):
    cluster.start_head(num_cpus=0)  # as on Kubernetes: the head runs the driver and aggregator, no worker
    cluster.add_node("node2", num_cpus=1)
    store = tmp_path / "history"
    args = _run_args(cluster, tmp_path, "--workers", "1", "--history", str(store), "--job-id", "job",
                     "--checkpoint-every", "0.5", "--worker-wait", "15")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = _kill_when_running(cluster, proc, "node2", ready=_checkpointed(store))
        assert any("WorkerHost" in k for k in killed), killed
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, (out[-2000:], err[-3000:])
    assert "no worker actor has been available for 15 s" in err and "Traceback" not in err, err[-3000:]
    first = HistoryStore.open(store).get_checkpoint("job")
    assert first is not None and 0 < first["images"] < N_ITEMS and first["done"] is False
    cluster.add_node("node3", num_cpus=1)
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=150)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout)
    assert summary["images"] == N_ITEMS and summary["duplicates"] == 0, summary  # the job's total, both runs
    stored = sum(w.n_images for w in HistoryStore.open(store).read_windows())
    assert stored == N_ITEMS
    assert HistoryStore.open(store).get_checkpoint("job")["done"] is True
