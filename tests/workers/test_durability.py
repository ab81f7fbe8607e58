"""Nothing acknowledged is lost, whatever dies: with a history store and a job id the driver acknowledges at the
source only what an aggregator checkpoint holds. Real redis-server, real Ray, exact counts: after the fault (and a
rerun where the driver itself died) every item sent is counted once in the windows, as a dead letter, or as a
duplicate, and the Redis group has nothing pending."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from monitor.drift.monitor import MonitorConfig, ReferenceConfig, WindowConfig
from monitor.history.store import HistoryStore
from tests.workers.helpers import add_captions
from workers.config import PipelineConfig
from workers.driver import run_pipeline

MONITOR = MonitorConfig(window=WindowConfig(kind="count", size=100),
                        reference=ReferenceConfig(mode="fixed", n_images=100))


def _stored_images(store: str) -> int:
    return sum(w.n_images for w in HistoryStore.open(store).read_windows())


def _cli_config(*argv: str) -> PipelineConfig:
    """The PipelineConfig ``splice-monitor run`` builds from these flags."""
    import argparse

    from workers.cli.run import build_config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return build_config(parser.parse_args(["run", *argv]))


@pytest.mark.parametrize("job", ["caps-job", None])
def test_sigkill_of_the_aggregator_actor_is_restored_from_its_checkpoint_and_replayed(ray_local, text_config,
                                                                                      redis_url, redis_client,
                                                                                      tmp_path, job):
    """The probe: the driver exited 1 with a raw traceback and 240 acknowledged items never reached a window. With
    ``job=None`` the configuration is the one a plain ``run --history`` (no ``--job-id``) builds: it is checkpointed
    under a derived job id, so it survives the same fault."""
    import ray

    add_captions(redis_client, "caps", 400)
    actors: dict = {}

    def after_submit(seq, workers):
        if seq == 9 and "killed" not in actors:
            pid = ray.get(actors["aggregator"].pid.remote())
            os.kill(pid, signal.SIGKILL)
            actors["killed"] = pid

    hooks = {"actors": lambda workers, aggregator: actors.update(aggregator=aggregator), "after_submit": after_submit}
    source = f"{redis_url}?stream=caps&group=g&consumer=c1&drain=1"
    if job is None:
        derived = _cli_config("--source", source, "--history", str(tmp_path / "h"), "--workers", "1",
                              "--metrics-port", "-1")
        assert derived.checkpoint_job and derived.checkpoint_job.startswith("run-caps-")
        job = derived.checkpoint_job
    config = PipelineConfig(source=source, worker=text_config, workers=1, batch_size=20, monitor=MONITOR,
                            history=str(tmp_path / "h"), checkpoint_job=job, checkpoint_every_s=0.5)
    summary = run_pipeline(config, hooks=hooks)
    assert "killed" in actors
    assert summary.images + summary.dead_letters_total + summary.duplicates == 400
    assert summary.images == 400 and summary.duplicates == 0
    assert redis_client.xpending("caps", "g")["pending"] == 0
    assert _stored_images(str(tmp_path / "h")) == 400  # replayed windows replace their first copies


def _run_cli(args: list[str]) -> subprocess.Popen:
    # its own session: killing the group is a crash of the driver and of the local Ray it started (a pod dying)
    return subprocess.Popen([sys.executable, "-m", "monitor", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_checkpoint(store, proc, timeout_s=240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        records = list((store / "checkpoints").glob("*.json")) if (store / "checkpoints").is_dir() else []
        if records:
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint appeared (exit {proc.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sigkill", "double-sigterm"])
def test_a_driver_that_dies_loses_nothing_acknowledged_and_the_rerun_completes(text_config, redis_url,
                                                                               redis_client, tmp_path, fault):
    """The probe: SIGKILL of the driver lost 54 acknowledged items; two SIGTERMs lost 182 and exited 130. A plain
    ``run --history`` (no ``--job-id``): the rerun finds the checkpoint under the job id derived from the same
    flags."""
    add_captions(redis_client, "caps", 600)
    store = tmp_path / "h"
    args = ["--source", f"{redis_url}?stream=caps&group=g&consumer=c1&drain=1", "--history", str(store),
            "--checkpoint-every", "0.5", "--workers", "1", "--batch-size", "20",
            "--model", "minilm", "--vocab", text_config.vocab, "--mean", "vocab", "--cache-dir", text_config.cache_dir,
            "--window", "100", "--reference-images", "100", "--metrics-port", "-1"]
    first = _run_cli(args)
    try:
        _wait_for_checkpoint(store, first)
        time.sleep(1.0)
        if fault == "sigkill":
            os.killpg(first.pid, signal.SIGKILL)
        else:
            first.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    try:
        os.killpg(first.pid, signal.SIGKILL)  # whatever of its local Ray is left
    except ProcessLookupError:
        pass
    second = _run_cli(args)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert "images counted: 600" in out and "duplicates:     0" in out, out
    assert redis_client.xpending("caps", "g")["pending"] == 0
    assert _stored_images(str(store)) == 600


def test_a_redis_server_restart_mid_run_loses_and_repeats_nothing(ray_local, text_config, tmp_path):
    """The Redis server restarts (append-only file kept) while batches are in flight and held for a checkpoint:
    reads and acknowledgements are retried until it is back, and every entry is counted once."""
    import threading

    from tests.workers.helpers import free_port, start_redis, wait_for_redis

    port = free_port()
    procs = [start_redis(port, tmp_path, aof=True)]
    try:
        client = wait_for_redis(port)
        add_captions(client, "caps", 300)

        def restart_server(seq, workers):
            if seq == 5 and len(procs) == 1:
                procs[0].terminate()
                procs[0].wait(timeout=20)

                def start():
                    time.sleep(1.5)
                    procs.append(start_redis(port, tmp_path, aof=True))

                threading.Thread(target=start).start()

        config = PipelineConfig(source=f"redis://127.0.0.1:{port}/0?stream=caps&group=g&consumer=c1&drain=1",
                                worker=text_config, workers=1, batch_size=20, monitor=MONITOR,
                                history=str(tmp_path / "h"), checkpoint_job="caps-job", checkpoint_every_s=0.5)
        summary = run_pipeline(config, hooks={"after_submit": restart_server})
        assert len(procs) == 2
        assert summary.images == 300 and summary.duplicates == 0 and summary.dead_letters_total == 0
        assert wait_for_redis(port).xpending("caps", "g")["pending"] == 0
        assert _stored_images(str(tmp_path / "h")) == 300
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
