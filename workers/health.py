"""Which worker actors can take work: the driver's view of worker failures and restarts."""

from __future__ import annotations

import logging
import time
from typing import Any

from monitor.errors import PipelineError

__all__ = ["WorkerHealth"]

log = logging.getLogger(__name__)


class WorkerHealth:
    """Which worker actors can take work. A worker whose batch failed is pinged until it answers again (Ray is
    restarting it and reloading its model meanwhile) and gets no new batches until then."""

    def __init__(self, workers: list[Any], pids: list[int], *, wait_s: float = 300.0) -> None:
        self.workers = workers
        self.pids = list(pids)
        self.wait_s = float(wait_s)  # how long every worker may be down before the run gives up
        self._all_down_since: float | None = None
        self.down: dict[int, tuple[Any, float]] = {}  # worker -> (ping ref or None, time of the next ping)
        self.dead: set[int] = set()
        self.failures = 0  # times a healthy worker failed a batch (a crash; Ray restarts it)

    def failed(self, idx: int) -> None:
        if idx not in self.down and idx not in self.dead:
            self.down[idx] = (None, 0.0)
            self.failures += 1

    def healthy(self) -> list[int]:
        return [i for i in range(len(self.workers)) if i not in self.down and i not in self.dead]

    def poll(self) -> None:
        import ray

        now = time.monotonic()
        for idx, (ref, next_at) in list(self.down.items()):
            if ref is None:
                if now >= next_at:
                    self.down[idx] = (self.workers[idx].pid.remote(), now)
                continue
            done, _ = ray.wait([ref], timeout=0)
            if not done:
                continue
            try:
                pid = ray.get(ref)
            except ray.exceptions.ActorDiedError:
                self.dead.add(idx)  # out of restarts
                del self.down[idx]
                continue
            except ray.exceptions.RayError:  # still restarting: ask again shortly
                self.down[idx] = (None, now + 0.5)
                continue
            if pid != self.pids[idx]:
                log.warning("worker %d is back as process %s (was %s)", idx, pid, self.pids[idx])
                self.pids[idx] = pid
            del self.down[idx]
        if len(self.dead) == len(self.workers):
            raise PipelineError("every worker actor died and is out of restarts (see --workers, max_restarts)")
        self._check_waiting(now)

    def _check_waiting(self, now: float) -> None:
        """Every worker down for longer than ``wait_s``: Ray cannot place them again (their node is gone and no other
        node has the CPUs/GPUs they ask for), so waiting longer would hang the run."""
        if self.healthy():
            self._all_down_since = None
            return
        if self._all_down_since is None:
            self._all_down_since = now
            return
        if now - self._all_down_since < self.wait_s:
            return
        import ray

        try:
            free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        except Exception:  # the cluster itself is unreachable: say what we know
            free = {}
        raise PipelineError(
            f"no worker actor has been available for {self.wait_s:g} s: Ray could not start them again (a node "
            f"lost and no other with the resources they request; free now: {free or 'unknown'}). Add a node or "
            f"lower --cpus-per-worker/--gpus-per-worker; what was not acknowledged is delivered again on the next "
            f"run (with --history and --job-id the rerun resumes from the last checkpoint)")
